"""The service ranks exactly as the promoted model: a trained learned-ranker champion, end to end."""

from __future__ import annotations

import numpy as np

from factory_assets.ml.recsys.artefact import load_manifest_model
from factory_assets.ml import registry
from factory_assets.serving.scorer import load_alias
from factory_assets_tests.assets.test_graph import TRAIN_DAY
from factory_assets_tests.helpers import small_factory, train


def test_a_ranker_champion_is_served_with_its_own_scores(home_copy):
    assert train(small_factory(home_copy), TRAIN_DAY).success
    aliases = home_copy / "simulator" / "aliases"
    pointer = registry.read_alias(aliases)
    model = load_manifest_model(pointer["path"], "served", pointer["sha256"])
    assert model.ranker is not None  # the factory's default model kind
    served = load_alias(aliases)
    rows = np.arange(min(25, len(model.user_ids)))
    np.testing.assert_array_equal(served.scores(rows), model.scores(rows))
    [answer] = served.recommend([str(model.user_ids[0])], 10)
    expected = np.argsort(-model.scores(np.array([0]))[0], kind="stable")[:10]
    assert answer.item_ids == [str(model.item_ids[j]) for j in expected] and not answer.fallback
    # the precomputed lists are exactly the model's scores of all its users, for any k and with exclusions
    from factory_assets_tests.service.test_ranker_precompute import direct_top

    full = model.scores(np.arange(len(model.user_ids)))
    users = [str(u) for u in model.user_ids[:40]] + ["nobody"]
    for k in (10, len(model.item_ids) + 5):
        for exclude in (False, True):
            for user, rec in zip(users, served.recommend(users, k, exclude)):
                row = int(model.user_rows([user])[0])
                assert (rec.item_ids, rec.scores) == direct_top(model, full, row, k, set(), exclude), (user, k, exclude)
