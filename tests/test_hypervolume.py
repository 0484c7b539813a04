"""The benchmarks' exact hypervolume: hand-computed volumes, and agreement with Optuna's own
(private, so compared here only) calculator on random sets in two and three objectives."""
import numpy as np
import pytest

from benchmarks.hypervolume import hypervolume


@pytest.mark.parametrize("points, reference, volume", [
    ([[1, 3], [2, 2], [3, 1]], [4, 4], 6.0),  # the staircase: 3 + 2 + 1
    ([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2]], [4, 4], 6.0),  # dominated and repeated: nothing
    ([[0.5, 0.5]], [1, 1], 0.25),
    ([[0, 0, 0]], [1, 2, 3], 6.0),  # one box
    ([[0, 0, 1], [1, 1, 0]], [2, 2, 2], 5.0),  # two boxes, 4 + 2, overlapping in a unit cube
    ([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 2, 2], 4.0),  # three 2-boxes; pairwise 1, all three 1
    ([[1, 1, 1], [2, 2, 2]], [2, 2, 2], 1.0),  # a point on the reference adds nothing
    (np.zeros((0, 3)), [1, 1, 1], 0.0),
])
def test_hand_computed_volumes(points, reference, volume):
    assert hypervolume(np.array(points, dtype=float), np.array(reference, dtype=float)) == \
        pytest.approx(volume)


def test_a_point_beyond_the_reference_is_refused():
    with pytest.raises(ValueError, match="reference"):
        hypervolume(np.array([[0.5, 1.5]]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="objectives"):
        hypervolume(np.array([[0.5, 0.5]]), np.array([1.0, 1.0, 1.0]))


@pytest.mark.parametrize("dims", [2, 3])
def test_agrees_with_optunas_calculator(dims):
    from optuna._hypervolume import compute_hypervolume  # private: a reference in tests only

    rng = np.random.default_rng(dims)
    for n in (1, 2, 5, 30):
        points = rng.random((n, dims))
        points[: n // 3] = np.round(points[: n // 3], 1)  # ties in some coordinates
        reference = np.ones(dims)
        assert hypervolume(points, reference) == pytest.approx(
            compute_hypervolume(points, reference), rel=1e-12, abs=1e-15)


def test_the_benchmark_scores_a_front_in_the_unit_cube():
    from benchmarks.codesign_vs_xnnpack import hypervolume as front_hypervolume

    members = [{"accuracy": 0.95, "latency_s": 0.005, "model_bytes": 500},
               {"accuracy": 0.5, "latency_s": 0.001, "model_bytes": 100}]  # under the floor
    # error 0.05 / 0.1, latency 5 / 10 ms, bytes 500 / 1000: a box of 0.5^3
    assert front_hypervolume(members, floor=0.9, budget_s=0.01, max_bytes=1000) == \
        pytest.approx(0.125)
    assert front_hypervolume(members[1:], floor=0.9, budget_s=0.01, max_bytes=1000) == 0.0
