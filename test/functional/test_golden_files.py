"""Every node of pillar.example x {Debian, RedHat} renders exactly its reviewed golden files.

After an intended change: `make golden`, then review `git diff test/fixtures/golden`.
"""

import pathlib
import tempfile

import pytest

from tools.golden import FAMILIES, GOLDEN, nodes, render, tree


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("node", nodes())
def test_rendered_files_match_golden(node, family):
    golden = GOLDEN / family / node
    assert golden.is_dir(), f"no golden files for {family}/{node}: run make golden"
    with tempfile.TemporaryDirectory() as tmp:
        render(node, family, pathlib.Path(tmp))
        fresh, kept = tree(pathlib.Path(tmp)), tree(golden)
    assert sorted(fresh) == sorted(kept), "the set of managed files changed"
    for rel in fresh:
        assert fresh[rel] == kept[rel], f"{family}/{node}/{rel} differs from its golden file (make golden, review)"
