"""Asset keys of the whole factory: one spelling, imported by both halves and by the automation policy.

The DataOps location materialises the first group, the MLOps location the second; each declares the other's
as external asset specs under these same keys, so the lineage graph of the workspace is one graph.
"""

# DataOps (the feature store's views; see factory_assets.feature_store.contract)
RAW_EVENTS = "raw_events"
USER_ITEM_DAILY = "user_item_daily"
ITEM_DAILY = "item_daily"
USER_FEATURES = "user_features"
ITEM_FEATURES = "item_features"
ONLINE_FEATURES = "online_features"
BEHAVIOUR_DRIFT = "behaviour_drift"
INTRADAY_FEATURES = "intraday_features"  # not partitioned: today so far, refreshed every quarter of an hour

# MLOps
TRAINING_WINDOW = "training_window"
CANDIDATE_MODEL = "candidate_model"
SERVED_MODEL = "served_model"
SHADOW_EVALUATION = "shadow_evaluation"
LIVE_STATE = "live_state"  # not partitioned: the champion plus today so far, for the service

# Reported from outside any run (``factory demo``)
ADAPTATION_DEMO = "adaptation_demo"

# The DataOps location's daily-partitioned assets: what the MLOps location declares as external daily specs
DAILY_DATA_KEYS: tuple[str, ...] = (RAW_EVENTS, USER_ITEM_DAILY, ITEM_DAILY, USER_FEATURES, ITEM_FEATURES, ONLINE_FEATURES,
                                    BEHAVIOUR_DRIFT)
# Every asset the DataOps location materialises (its automation sensor's target)
DATA_KEYS: tuple[str, ...] = (*DAILY_DATA_KEYS, INTRADAY_FEATURES)
ML_KEYS: tuple[str, ...] = (TRAINING_WINDOW, CANDIDATE_MODEL, SERVED_MODEL, SHADOW_EVALUATION)
