"""Unit tests load the formula's plain-Python model straight from _utils/."""

import copy
import pathlib
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "_utils"))


@pytest.fixture(scope="session")
def example_pillar():
    """The hafw subtree of pillar.example (the reference deployment)."""
    return yaml.safe_load((REPO / "pillar.example").read_text())["hafw"]


@pytest.fixture
def pillar(example_pillar):
    """A private copy of pillar.example's hafw subtree, free to mutate."""
    return copy.deepcopy(example_pillar)
