"""Condensed-tree walk, cut and statistics on a small hand-built tree (answers worked out on paper)."""
import numpy as np
import pytest

from flare_core.detectors import tree as T
from flare_core.detectors.decision import decide_faithful, highest_marked_ancestor, persistence_ratios

# 12 points (ids 0..11), root = 12.
#
#   root 12 (birth 0)
#   |- point 0 falls out at 0.5                       (top-level noise)
#   |- 13  size 8, born 1.0
#   |   |- point 1 falls out at 1.005
#   |   |- 15 size 5, born 1.01   <- gap 0.01 <= xi: unstable, walk steps in
#   |   |   |- 17 size 3, born 1.5  <- gap 0.49 > xi: stable, cut at 1.5
#   |   |   |    points 2, 3, 4 fall out at 3.0
#   |   |   |- 18 size 2, born 1.5
#   |   |        points 5, 6 fall out at 2.0
#   |   |- 16 size 2, born 1.01
#   |        points 7, 8 fall out at 1.2           (noise at the cut)
#   |- 14  size 3, born 1.0
#        points 9, 10, 11 fall out at 4.0
ROWS = [
    (12, 0, 0.5, 1), (12, 13, 1.0, 8), (12, 14, 1.0, 3),
    (13, 1, 1.005, 1), (13, 15, 1.01, 5), (13, 16, 1.01, 2),
    (15, 17, 1.5, 3), (15, 18, 1.5, 2),
    (17, 2, 3.0, 1), (17, 3, 3.0, 1), (17, 4, 3.0, 1),
    (18, 5, 2.0, 1), (18, 6, 2.0, 1),
    (16, 7, 1.2, 1), (16, 8, 1.2, 1),
    (14, 9, 4.0, 1), (14, 10, 4.0, 1), (14, 11, 4.0, 1),
]


@pytest.fixture
def tree():
    parent, child, lam, size = zip(*ROWS)
    return T.CondensedTree.from_arrays(parent, child, lam, size, n_points=12)


def test_structure(tree):
    assert T.cluster_births(tree) == {12: 0.0, 13: 1.0, 14: 1.0, 15: 1.01, 16: 1.01, 17: 1.5, 18: 1.5}
    assert T.cluster_sizes(tree)[12] == 12 and T.cluster_sizes(tree)[15] == 5
    assert T.cluster_children(tree, 12) == [13, 14]
    assert T.cluster_children(tree, 15) == [17, 18]
    assert T.cluster_children(tree, 17) == []
    assert T.cluster_depths(tree) == {12: 0, 13: 1, 14: 1, 15: 2, 16: 2, 17: 3, 18: 3}
    assert T.subtree_points(tree, 13).tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    owner, lam = T.point_parents(tree)
    assert owner.tolist() == [12, 13, 17, 17, 17, 18, 18, 16, 16, 14, 14, 14]
    assert lam[0] == 0.5 and lam[9] == 4.0


def test_stability_by_hand(tree):
    stab = T.cluster_stability(tree)
    assert stab[17] == pytest.approx(3 * (3.0 - 1.5))
    assert stab[15] == pytest.approx(3 * (1.5 - 1.01) + 2 * (1.5 - 1.01))
    assert stab[14] == pytest.approx(3 * (4.0 - 1.0))


def test_walk_steps_over_unstable_level_and_cuts(tree):
    walk = T.walk_largest_chain(tree, xi=0.02, max_depth=3)
    assert walk.start == 13
    assert [(s.parent, s.child, s.stable) for s in walk.steps] == [(13, 15, False), (15, 17, True)]
    assert walk.steps[0].gap == pytest.approx(0.01)
    assert walk.found and walk.cut_parent == 15 and walk.cut_lambda == 1.5


def test_walk_gives_up(tree):
    too_strict = T.walk_largest_chain(tree, xi=1.0, max_depth=3)
    assert not too_strict.found and "no cluster children" in too_strict.reason
    too_shallow = T.walk_largest_chain(tree, xi=0.02, max_depth=1)
    assert not too_shallow.found and len(too_shallow.steps) == 1
    flat = T.CondensedTree.from_arrays([3, 3, 3], [0, 1, 2], [1.0, 1.0, 1.0], [1, 1, 1], n_points=3)
    assert T.walk_largest_chain(flat).start is None and not T.walk_largest_chain(flat).found


def test_cut_labels(tree):
    labels, nodes = T.labels_at_lambda(tree, 1.5)
    assert nodes == [14, 17, 18]
    assert labels.tolist() == [-1, -1, 1, 1, 1, 2, 2, -1, -1, 0, 0, 0]
    assert sorted(T.alive_nodes(tree, 1.5)) == [14, 16, 17, 18]
    early, early_nodes = T.labels_at_lambda(tree, 1.0)
    assert early_nodes == [13, 14] and early.tolist() == [-1] + [0] * 8 + [1] * 3


def test_faithful_rule_reproduces_reference_including_noise_as_benign(tree):
    d = decide_faithful(tree, xi=0.02, max_depth=3)
    # Label counts at the cut: noise 4, node 14: 3, node 17: 3, node 18: 2 -> the reference calls the
    # noise "benign" (most common label) and flags every clustered point.
    assert d.found and d.evidence["benign_label"] == -1
    assert np.flatnonzero(d.flagged).tolist() == [2, 3, 4, 5, 6, 9, 10, 11]
    assert d.clusters.tolist() == [-1, -1, 1, 1, 1, 2, 2, -1, -1, 0, 0, 0]


def test_faithful_without_stable_split_flags_nothing(tree):
    d = decide_faithful(tree, xi=1.0)
    assert not d.found and not d.flagged.any() and d.benign.all()


def test_persistence_and_grouping(tree):
    r = persistence_ratios(tree)
    assert r[17] == pytest.approx(3.0 / 1.5)
    assert r[14] == pytest.approx(4.0 / 1.0)
    # 13's points fall out at 1.005, 1.2, 1.2, 2, 2, 3, 3, 3 -> median 2.0
    assert r[13] == pytest.approx(2.0)
    rep = highest_marked_ancestor(tree, {14, 15, 17})
    assert rep == {12: 12, 13: 12, 14: 14, 15: 15, 16: 12, 17: 15, 18: 15}


def test_json_safe_walk(tree):
    import json

    json.dumps(T.walk_largest_chain(tree).as_dict(), allow_nan=False)
