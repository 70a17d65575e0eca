"""The claims check reads seed means per budget and round and says whether each claim holds."""

import pandas as pd

from experiments.paper_claims import CLAIMS, Claim, claim_rows, mined_labels


def _frame(rows):
    return pd.DataFrame(rows, columns=["method", "dataset", "budget", "seed", "round", "value", "labels_spent",
                                       "labels_total", "labels_transient", "precision_transient"])


def test_claims_compare_seed_means_at_their_budget_and_round():
    rows = [(m, "d", b, s, 1, v + 0.01 * s, 10, 10, float("nan"), float("nan"))
            for m, b, v in [("biomedvr", "shots_16", 0.5), ("attrvr", "shots_16", 0.4), ("biomedvr", "shots_4", 0.2),
                            ("attrvr", "shots_4", 0.3)] for s in range(3)]
    out = claim_rows(_frame(rows), [Claim("16", "biomedvr", "attrvr", 1, "shots_16"),
                                    Claim("4", "biomedvr", "attrvr", 1, "shots_4"),
                                    Claim("absent", "biomedvr", "vp", 1, "shots_16")])
    assert [r["result"] for r in out] == ["holds", "does not hold", "not in this sweep"]
    assert out[0]["difference"] == 10.0 and out[0]["round"] == "shots_16, r1" and out[0]["better"] == "51.0 ± 1.0"


def test_mined_labels_are_tabulated_per_round_and_every_paper_has_claims():
    rows = [("ours", "d", "b", s, r, 0.3, 10 * r, 10 * r + 5, 5.0, 0.4 + 0.1 * r) for s in range(2) for r in (0, 1)]
    assert mined_labels(_frame(rows)) == [{"method": "ours", "r0": "40.0 % of 5", "r1": "50.0 % of 5"}]
    assert {"cec", "cbsq", "dualprompt", "biomedvr", "valiant"} <= set(CLAIMS)


def test_queries_spent_are_the_last_rounds_seed_means_per_method():
    from experiments.paper_claims import queries_spent

    frame = pd.DataFrame([("valiant_single", "d", "b", s, r, 0.7, 10, 10, 640.0 if r else 640.0) for s in range(2)
                          for r in (0, 5)] + [("random", "d", "b", s, 5, 0.6, 10, 10, float("nan")) for s in range(2)],
                         columns=["method", "dataset", "budget", "seed", "round", "value", "labels_spent",
                                  "labels_total", "cost_blackbox_queries"])
    assert queries_spent(frame) == [{"method": "random", "queries": "0", "final": "60.0"},
                                    {"method": "valiant_single", "queries": "640", "final": "70.0"}]
