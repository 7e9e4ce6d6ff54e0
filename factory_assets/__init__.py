"""factory_assets: a Dagster project that ships the recommendation factory, not only its product.

Pure library packages (``sources``, ``features``, ``recsys``, ``registry``) hold the logic; ``assets``,
``checks``, ``definitions`` and ``cli`` wire it into Dagster.  Imports point one way: the wiring uses the
library, never the reverse.
"""

__version__ = "0.1.0"
