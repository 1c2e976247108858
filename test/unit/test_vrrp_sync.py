"""Unit tests of _modules/vrrp_sync.py and _states/vrrp_sync.py with loader mocks.

The role, the peer and the hook are mocked; the maintenance files are real
files named by a copy of the rendered keepalived.conf. The live
counterpart: test/integration/test_operating_pair.py.
"""

import importlib.util
import pathlib

import pytest
from salt.exceptions import CommandExecutionError

REPO = pathlib.Path(__file__).resolve().parents[2]
GOLDEN_CONF = REPO / "test/fixtures/golden/Debian/fw-cent7i/etc/keepalived/keepalived.conf"


def load(kind):
    spec = importlib.util.spec_from_file_location(f"vrrp_sync_{kind}", REPO / f"_{kind}" / "vrrp_sync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


mod = load("modules")
st = load("states")


def role(group="MASTER", hook="primary", gate="open", consistent=True, problems=(), held=True):
    return {"group": group, "hook": hook, "gate": gate, "consistent": consistent, "problems": list(problems),
            "conntrackd_running": True, "keepalived_running": True, "sync_group": "G1",
            "instances": {"VI_1": {"held": ["192.168.0.40"] if held else []}}}


@pytest.fixture
def files(tmp_path):
    """keepalived.conf with the maintenance files under tmp_path; the module pointed at it."""
    text = GOLDEN_CONF.read_text()
    for old in ("/run/keepalived/", "/var/lib/hafw/"):
        text = text.replace(old, f"{tmp_path}/")
    conf = tmp_path / "keepalived.conf"
    conf.write_text(text)
    mod.__opts__ = {"vrrp_sync.keepalived_config": str(conf), "id": "fw-cent7i", "test": False}
    mod.__salt__ = {}
    return tmp_path


# -- the execution module -------------------------------------------------------
def test_the_files_come_from_keepalived_conf(files):
    assert mod.maintenance() == {"demoted": False, "persistent": False, "stepping_down": False,
                                 "files": {"hafw_demote": f"{files}/hafw-demote",
                                           "hafw_demote_persistent": f"{files}/vrrp-demote",
                                           "hafw_step_down": f"{files}/hafw-step-down"}}


def test_demote_and_undemote_write_what_keepalived_reads(files):
    assert mod.demote() == {"changed": True, "demoted": True, "persistent": False}
    assert (files / "hafw-demote").read_text() == "1\n"
    assert mod.demote()["changed"] is False
    assert mod.demote(persistent=True)["persistent"] is True and (files / "vrrp-demote").read_text() == "1\n"
    assert mod.maintenance()["demoted"] is True
    assert mod.undemote() == {"changed": True, "demoted": False}
    assert (files / "hafw-demote").read_text() == "0\n" and (files / "vrrp-demote").read_text() == "0\n"


def test_a_config_without_the_files_says_so(files):
    conf = files / "keepalived.conf"
    conf.write_text("vrrp_instance VI_1 {\n}\n")
    with pytest.raises(CommandExecutionError, match="declares no track_file hafw_demote.*vrrp:maintenance is off"):
        mod.maintenance()


def test_step_down_faults_until_the_vips_are_gone_then_clears(files):
    seen = []
    answers = iter([role(), role(), role(held=False)])

    def fake_role():
        seen.append((files / "hafw-step-down").read_text())
        return next(answers)
    mod.__salt__ = {"conntrack.role": fake_role}
    out = mod.step_down()
    assert seen == ["1\n"] * 3  # FAULT while the VIPs were held
    assert (files / "hafw-step-down").read_text() == "0\n" and (files / "hafw-demote").read_text() == "1\n"
    assert out["demoted"] is True and out["released_after_s"] >= 0


def test_step_down_that_never_releases_clears_the_fault_file(files):
    mod.__salt__ = {"conntrack.role": role}
    with pytest.raises(CommandExecutionError, match="still holds VIPs"):
        mod.step_down(timeout=0.2)
    assert (files / "hafw-step-down").read_text() == "0\n"


# -- vrrp_sync.consistent ----------------------------------------------------------
@pytest.fixture
def state_env(tmp_path):
    ran = []
    st.__opts__ = {"test": False, "id": "fw-cent7i", "conntrack.hook_state_file": str(tmp_path / "hafw-role")}
    st.__salt__ = {"vrrp_sync.maintenance": lambda: {"demoted": False, "persistent": False},
                   "cmd.run_all": lambda argv, **kw: ran.append(argv) or {"retcode": 0, "stdout": "", "stderr": ""},
                   "hafw.peers": lambda: ["fw-cent7j"]}
    return ran


def roles(*answers):
    it = iter(answers)
    last = []

    def fake():
        last[:] = [next(it, last[0] if last else None)]
        return last[0]
    return fake


def test_a_consistent_node_reports_no_change(state_env, monkeypatch):
    st.__salt__["conntrack.role"] = roles(role())
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    ret = st.consistent("G1", settle=0)
    assert ret["result"] is True and ret["changes"] == {} and "matches the role" in ret["comment"]


def test_a_master_that_missed_its_transition_runs_primary(state_env, monkeypatch):
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    st.__salt__["conntrack.role"] = roles(role(hook="backup", gate="closed", consistent=False), role())
    ret = st.consistent("G1", settle=0)
    assert ret["result"] is True and ret["changes"]["actions"] == ["primary"]
    assert state_env == [[st.HOOK, "primary"]]


def test_test_mode_says_what_it_would_do_and_runs_nothing(state_env, monkeypatch):
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    st.__opts__["test"] = True
    st.__salt__["conntrack.role"] = roles(role(group="BACKUP", hook="primary", gate="open", consistent=False))
    ret = st.consistent("G1", settle=0)
    assert ret["result"] is None and ret["comment"].startswith("would backup (holds no VIP")
    assert ret["changes"]["actions"] == ["backup"] and state_env == []


def lb_env(state_env, monkeypatch, daemons, services=("TCP 192.168.1.60:25",), after_reload=None):
    """A load balancer: an lvs view and no conntrackd, the sync daemons and services given
    (after_reload: the daemons once keepalived has been reloaded)."""
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    reloads = []
    st.__salt__.update({
        "conntrack.role": roles(role(hook=None, gate=None)),
        "hafw.node": lambda: {"lvs": {"sync_daemon": {"interface": "enp0s8"}, "virtual_servers": [{}]}},
        "ipvs.sync_status": lambda: {"daemons": [{"state": d} for d in (
            after_reload if reloads and after_reload is not None else daemons)]},
        "ipvs.services": lambda stats=True: [{"name": n} for n in services],
        "service.reload": lambda name: reloads.append(name) or True})
    return reloads


def test_a_load_balancer_master_with_its_master_sync_daemon_is_consistent(state_env, monkeypatch):
    reloads = lb_env(state_env, monkeypatch, ["master"])
    ret = st.consistent("group500", settle=0)
    assert ret["result"] is True and ret["changes"] == {} and reloads == []


def test_a_load_balancer_master_running_the_backup_sync_daemon_is_reloaded(state_env, monkeypatch):
    reloads = lb_env(state_env, monkeypatch, ["backup"], after_reload=["master"])
    ret = st.consistent("group500", settle=0)
    assert ret["result"] is True and reloads == ["keepalived"]
    assert ret["changes"]["actions"] == ["reload keepalived"]
    assert "sync daemons are backup: a master needs the master one" in ret["changes"]["why"][0]


def test_a_reload_that_does_not_fix_the_sync_daemon_fails(state_env, monkeypatch):
    reloads = lb_env(state_env, monkeypatch, ["backup"])
    ret = st.consistent("group500", settle=0)
    assert ret["result"] is False and reloads == ["keepalived"]
    assert "still: its IPVS sync daemons are backup" in ret["comment"]


def test_a_firewall_pair_without_a_gate_still_reruns_a_missed_transition(state_env, monkeypatch):
    """No takeover gate (conntrackd:takeover_gate false) is not a load balancer."""
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    st.__salt__["hafw.node"] = lambda: {"conntrackd": {"interface": "enp0s9"}, "lvs": None}
    st.__salt__["conntrack.role"] = roles(role(hook="backup", gate=None, consistent=False), role(gate=None))
    ret = st.consistent("G1", settle=0)
    assert ret["changes"]["actions"] == ["primary"] and state_env == [[st.HOOK, "primary"]]


def test_a_load_balancer_without_its_virtual_services_would_be_reloaded(state_env, monkeypatch):
    st.__opts__["test"] = True
    reloads = lb_env(state_env, monkeypatch, ["master"], services=())
    ret = st.consistent("group500", settle=0)
    assert ret["result"] is None and reloads == []
    assert ret["comment"] == "would reload keepalived (the kernel has none of its IPVS virtual services)"


def test_a_restarted_conntrackd_on_the_backup_asks_for_a_resync_once(state_env, monkeypatch, tmp_path):
    (tmp_path / "hafw-role").write_text("backup 1000000\n")  # 1000 s after the epoch
    monkeypatch.setattr(st, "_process_start", lambda name: 5000.0)
    asked = []
    st.__salt__["conntrack.request_resync"] = lambda: asked.append(1)
    st.__salt__["conntrack.role"] = roles(role(group="BACKUP", hook="backup", gate="closed"))
    first = st.consistent("G1", settle=0)
    assert first["changes"]["actions"] == ["resync-backup"] and asked == [1]
    second = st.consistent("G1", settle=0)  # the .reconciled marker is newer than conntrackd now
    assert second["changes"] == {} and asked == [1]


def test_split_vips_fail_without_acting(state_env, monkeypatch):
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    st.__salt__["conntrack.role"] = roles(role(group="SPLIT", consistent=False, problems=["the VIPs are split"]))
    ret = st.consistent("G1", settle=0)
    assert ret["result"] is False and "keepalived must settle the VIPs" in ret["comment"] and state_env == []


@pytest.fixture
def clock(monkeypatch):
    """A fake clock for the state's waits: sleep() advances it."""
    now = {"t": 1000.0}
    monkeypatch.setattr(st.time, "time", lambda: now["t"])
    monkeypatch.setattr(st.time, "monotonic", lambda: now["t"])
    monkeypatch.setattr(st.time, "sleep", lambda s: now.update(t=now["t"] + s))
    return now


def test_a_keepalived_that_exits_right_after_its_start_is_started_again(state_env, monkeypatch, clock):
    """Judged only after the start-up grace: the one that exited by then is started again."""
    monkeypatch.setattr(st, "_process_start", lambda name: 999.9 if name == "keepalived" else 0)  # 0.1 s old
    young, gone = role(group="BACKUP", hook="fault", gate="closed"), \
        dict(role(group="BACKUP", hook="fault", gate="closed"), keepalived_running=False)
    started, looks = [], []

    def fake_role():
        """Running at the first look, gone from the second until the state starts it again."""
        looks.append(1)
        return young if started or len(looks) == 1 else gone
    st.__salt__["conntrack.role"] = fake_role
    st.__salt__["service.start"] = lambda name: started.append(name) or True
    ret = st.consistent("G1", settle=10)
    assert started == ["keepalived"] and ret["result"] is True, ret
    assert ret["changes"]["actions"] == ["start keepalived"]


def test_a_keepalived_that_exits_again_fails_the_state(state_env, monkeypatch, clock):
    monkeypatch.setattr(st, "_process_start", lambda name: 0)
    gone = dict(role(group="BACKUP", hook="fault", gate="closed"), keepalived_running=False)
    st.__salt__["conntrack.role"] = roles(gone)
    st.__salt__["service.start"] = lambda name: True
    ret = st.consistent("G1", settle=0)
    assert ret["result"] is False and "exited again" in ret["comment"], ret


# -- vrrp_sync.master / backup -----------------------------------------------------
def healthy(would_lose=0):
    return lambda timeout: {"would_lose": would_lose, "verdict": f"{would_lose} missing"}


def test_master_refuses_when_the_replica_lacks_connections(state_env):
    st.__salt__.update({"conntrack.role": roles(role(group="BACKUP", hook="backup", gate="closed")),
                        "conntrack.sync_health": healthy(12)})
    ret = st.master("G1")
    assert ret["result"] is False and ret["changes"] == {} and "not switching: 12 missing" in ret["comment"]


def test_master_takes_over_after_the_peer_steps_down(state_env):
    published = []
    st.__salt__.update({
        "conntrack.role": roles(role(group="BACKUP", hook="backup", gate="closed"), role(group="BACKUP"), role()),
        "conntrack.sync_health": healthy(),
        "vrrp_sync.undemote": lambda: {"changed": False},
        "publish.publish": lambda tgt, fun, arg, timeout: published.append((tgt, fun, arg)) or {tgt: {"ok": 1}},
    })
    ret = st.master("G1", timeout=5)
    assert ret["result"] is True, ret
    assert ret["changes"]["master"] == {"old": "fw-cent7j", "new": "fw-cent7i"}
    assert published == [("fw-cent7j", "vrrp_sync.step_down", ["persistent=False", "timeout=5"])]


def test_master_rolls_back_when_it_does_not_take_over(state_env):
    published = []

    def publish(tgt, fun, arg, timeout):
        published.append(fun)
        return {tgt: role() if fun == "conntrack.role" else {"ok": 1}}
    st.__salt__.update({"conntrack.role": roles(role(group="BACKUP", hook="backup", gate="closed")),
                        "conntrack.sync_health": healthy(), "vrrp_sync.undemote": lambda: {},
                        "publish.publish": publish})
    ret = st.master("G1", timeout=0.3)
    assert ret["result"] is False and ret["changes"]["rolled_back"] is True
    assert published[:2] == ["vrrp_sync.step_down", "vrrp_sync.undemote"]
    assert "rolled back: fw-cent7j undemoted, a master holds the VIPs" in ret["comment"]


def test_backup_on_a_backup_only_demotes(state_env):
    demoted = []
    st.__salt__.update({"conntrack.role": roles(role(group="BACKUP", hook="backup", gate="closed")),
                        "vrrp_sync.demote": lambda persistent: demoted.append(persistent)})
    ret = st.backup("G1", persistent=True)
    assert ret["result"] is True and ret["changes"] == {"maintenance": {"demoted": True, "persistent": True}}
    assert demoted == [True]


def test_backup_in_test_mode_moves_nothing(state_env):
    st.__opts__["test"] = True
    st.__salt__.update({"conntrack.role": roles(role()), "conntrack.sync_health": healthy()})
    ret = st.backup("G1")
    assert ret["result"] is None and ret["comment"].startswith("would hand the master role from fw-cent7i")


def test_an_unreachable_peer_stops_the_switchover_before_anything_moves(state_env):
    def unreachable(timeout):
        raise CommandExecutionError("no answer from fw-cent7j to conntrack.sync_digest within 30s")
    st.__salt__.update({"conntrack.role": roles(role()), "conntrack.sync_health": unreachable})
    ret = st.backup("G1")
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"].startswith("not switching: cannot tell whether the peer holds the connections: no answer")
