"""KL schedules: values at chosen steps, round trips through checkpoints, bad specs."""

import pytest

from pyrovae.errors import PyrovaeError
from pyrovae.infer.schedules import from_dict, parse_schedule, to_dict


def test_constant():
    s = parse_schedule("constant", beta=4.0, total_steps=100)
    assert [s(0), s(50), s(10_000)] == [4.0, 4.0, 4.0]


def test_linear_warm_up():
    s = parse_schedule("linear:steps=100", beta=2.0, total_steps=1000)
    assert s(0) == 0.0 and s(50) == pytest.approx(1.0) and s(100) == 2.0 and s(999) == 2.0


def test_linear_in_epochs_and_default_length():
    assert parse_schedule("linear:epochs=3", 1.0, 1000, steps_per_epoch=10)(15) == 0.5
    default = parse_schedule("linear", 1.0, total_steps=400)  # rises over the first half
    assert default(100) == 0.5 and default(200) == 1.0


def test_cyclical_rises_then_stays_flat_in_each_cycle():
    s = parse_schedule("cyclical:cycles=4,ratio=0.5", beta=1.0, total_steps=400)
    # each cycle is 100 steps: rise over 50, flat for 50
    assert [s(0), s(25), s(50), s(99)] == [0.0, 0.5, 1.0, 1.0]
    assert [s(100), s(125), s(300), s(350)] == [0.0, 0.5, 0.0, 1.0]
    assert s(400) == 1.0  # after the run (resumed longer): stays at the target


def test_cyclical_ratio_one_is_a_sawtooth():
    s = parse_schedule("cyclical:cycles=2,ratio=1", beta=3.0, total_steps=100)
    assert [s(0), s(25), s(49), s(50)] == [0.0, 1.5, pytest.approx(2.94), 0.0]


def test_sigmoid_starts_at_zero_ends_at_beta_and_is_half_in_the_middle():
    s = parse_schedule("sigmoid:steps=100,k=8", beta=2.0, total_steps=1000)
    assert s(0) == pytest.approx(0.0, abs=1e-12) and s(50) == pytest.approx(1.0)
    assert s(100) == 2.0 and s(25) < 0.5 < s(75) < 2.0


@pytest.mark.parametrize("spec", ["constant", "linear:steps=7", "cyclical:cycles=3,ratio=0.25",
                                  "sigmoid:steps=9,k=4"])
def test_round_trip_through_plain_data(spec):
    s = parse_schedule(spec, beta=1.5, total_steps=60)
    again = from_dict(to_dict(s))
    assert again == s and [again(t) for t in range(70)] == [s(t) for t in range(70)]


@pytest.mark.parametrize("spec,beta,match", [
    ("constant", -1.0, "beta must be a finite number >= 0"),
    ("cyclical:cycles=0", 1.0, "whole number of cycles >= 1"),
    ("cyclical:ratio=0", 1.0, r"ratio in \(0, 1\]"),
    ("cyclical:ratio=1.5", 1.0, r"ratio in \(0, 1\]"),
    ("exponential", 1.0, "unknown KL schedule 'exponential'"),
    ("linear:cycles=2", 1.0, "linear takes epochs, steps"),
    ("linear:steps=abc", 1.0, "must be a number"),
    ("linear:steps=0", 1.0, "at least 1 step"),
    ("sigmoid:k=-1", 1.0, "k > 0"),
])
def test_bad_specs_are_clear_errors(spec, beta, match):
    with pytest.raises(PyrovaeError, match=match):
        parse_schedule(spec, beta=beta, total_steps=100)
