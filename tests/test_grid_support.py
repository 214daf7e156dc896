"""Grid support: which corners of a point's grid cell lack MC, and the one warning that says so."""

from __future__ import annotations

import doctest

import numpy as np

import fedhex_hep.generation.grid_support as grid_support
from fedhex_hep.config import load_config
from fedhex_hep.generation.grid_support import missing_corners, sparse_cell_message

#: a complete 3 x 3 lattice of (m_Phi, m_omega) in GeV
LATTICE = np.array([(p, o) for p in (1000.0, 2000.0, 3000.0) for o in (1.0, 2.0, 4.0)])
#: the same without its (3000, 4) corner, as after a failed production job
HOLED = LATTICE[~np.all(LATTICE == (3000.0, 4.0), axis=1)]
NAMES = ["mphi", "momega"]


def test_module_examples_run() -> None:
    result = doctest.testmod(grid_support)
    assert result.failed == 0 and result.attempted >= 2


def test_complete_cells_have_no_missing_corner() -> None:
    for point in ([1500, 1.5], [2500, 3.0], [2000, 3.0], [2000, 2.0], [3000, 4.0], [1000, 1.0]):
        assert missing_corners(LATTICE, point) == [], point


def test_missing_corner_is_named_for_the_cells_that_touch_it() -> None:
    assert missing_corners(HOLED, [2500, 3.0]) == [(3000.0, 4.0)]
    assert missing_corners(HOLED, [3000, 3.0]) == [(3000.0, 4.0)]  # on the cell's edge
    assert missing_corners(HOLED, [3000, 4.0]) == [(3000.0, 4.0)]  # the node itself
    assert missing_corners(HOLED, [2500, 1.5]) == []
    assert missing_corners(HOLED, [1500, 3.0]) == []
    two_gone = HOLED[~np.all(HOLED == (2000.0, 2.0), axis=1)]
    assert missing_corners(two_gone, [2500, 3.0]) == [(2000.0, 2.0), (3000.0, 4.0)]


def test_points_outside_the_grid_are_left_to_the_range_warning() -> None:
    assert missing_corners(HOLED, [3500, 3.0]) == []
    assert missing_corners(HOLED, [2500, 0.5]) == []


def test_a_grid_that_is_not_a_lattice_is_not_checked() -> None:
    # m_omega a fixed fraction of m_Phi: each m_Phi has its own m_omega values, no rectangular cells
    ratio_grid = np.array([(p, f * p) for p in (1000.0, 3000.0, 5000.0, 7000.0) for f in (0.001, 0.002, 0.004)])
    assert missing_corners(ratio_grid, [4000, 8.0]) == []
    # a lattice with a third of its nodes empty is still checked
    sparse = LATTICE[[0, 1, 2, 3, 5, 6]]
    assert missing_corners(sparse, [2500, 3.0]) == [(2000.0, 2.0), (3000.0, 2.0), (3000.0, 4.0)]


def test_one_message_counts_the_points_and_names_the_first() -> None:
    points = np.array([[2500, 3.0], [1500, 1.5], [2600, 3.5], [2700, 3.0], [2800, 2.5]])
    message = sparse_cell_message(HOLED, points, NAMES)
    assert message.startswith("4 of 5 mass points (mphi, momega) lie in grid cells with corners that have no training MC")
    assert "(2500, 3) lacks (3000, 4); (2600, 3.5) lacks (3000, 4); (2700, 3) lacks (3000, 4); and 1 more." in message
    assert "(1500, 1.5)" not in message
    # the remedy it names is a real config key with a valid value
    assert message.endswith("train with training.conditioning_l2 = 0.01, which steadies such cells")
    assert load_config(overrides={"training.conditioning_l2": 0.01}).training.conditioning_l2 == 0.01
    assert sparse_cell_message(HOLED, points[1:2], NAMES) is None
    assert sparse_cell_message(np.zeros((0, 2)), points, NAMES) is None
