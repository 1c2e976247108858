"""make render on a bad pillar: non-zero exit, the validation message, nothing written."""

import pathlib
import subprocess

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_bad_pillar_writes_nothing(tmp_path):
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    pillar["hafw"]["clusters"]["fw-pair"]["nodes"]["fw-cent7i"]["state"] = "SLAVE"
    pillar["hafw"]["clusters"]["lb-pair"]["vrrp"]["instances"]["instance52"]["virtual_router_id"] = 300
    bad = tmp_path / "bad.sls"
    bad.write_text(yaml.safe_dump(pillar))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(["make", "-s", "render", "NODE=fw-cent7m", f"OUT={out}", f"PILLAR={bad}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    # every problem, with its pillar key, even those of other clusters than the node's
    assert "hafw:clusters:fw-pair:nodes:fw-cent7i:state: 'SLAVE' is not a valid VRRP state" in proc.stderr
    assert "hafw:clusters:lb-pair:vrrp:instances:instance52:virtual_router_id: 300 is outside 1-255" in proc.stderr
    assert list(out.iterdir()) == []
