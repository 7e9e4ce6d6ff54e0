"""Data checks and promotion gates, as check specs plus the functions that evaluate them."""
