"""The lab fleet run agentless: salt-ssh from the salt host, sshd in each formula host.

What the repository ships for users is used as it is: `Saltfile` (salt-ssh
runs from the repository, so it is read) and `roster.example`'s entry shape
and set_path. The lab adds only what differs per run:

- the salt host: salt-ssh's key pair (ssh-keygen, in its own /etc/salt/pki,
  the Saltfile's default place), a roster of the formula hosts' management
  addresses, and a known_hosts file with each host's key (named in the master
  config: salt-ssh reads it only there): host keys are checked, never
  accepted blindly.
- each formula host: its own host key and an sshd on its management address
  only, with its own config under /etc/ssh/hafw-lab (the host's private
  /etc: the machine's sshd config and /root are left alone), key-only root
  login from the salt host's key.

Everything stays inside the lab's namespaces (see docs/lab.md).
"""

import shlex
import time

import yaml

from .salt import REPO
from .saltmaster import VENV_BIN, json_output, put

SALTFILE = yaml.safe_load((REPO / "Saltfile").read_text())["salt-ssh"]
ROSTER_EXAMPLE = yaml.safe_load((REPO / "roster.example").read_text())
SSH_DIR = "/etc/ssh/hafw-lab"
SSHD_PID = "/run/hafw-lab-sshd.pid"
# the roster's key: the Saltfile's default (salt-ssh's own default place for it)
CLIENT_KEY = next(iter(ROSTER_EXAMPLE.values()))["priv"]
# salt-ssh reads known_hosts_file from the master config, not from a Saltfile
KNOWN_HOSTS = "/etc/salt/pki/master/ssh/known_hosts"

SSHD_CONFIG = """\
# sshd of a lab host (lab/saltssh.py): the management address only, key-only root login
ListenAddress {address}
HostKey {ssh_dir}/ssh_host_ed25519_key
PidFile {pid}
AuthorizedKeysFile {ssh_dir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# salt-ssh copies its thin with scp, which speaks SFTP since OpenSSH 9
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def client_key(host):
    """Generate salt-ssh's key pair in the salt host (once); its public key line."""
    host.exec(["sh", "-c", 'test -f "$1" || { mkdir -p "$(dirname "$1")" && '
                           'ssh-keygen -q -t rsa -b 3072 -N "" -C salt-ssh@hafw-lab -f "$1"; }', "key", CLIENT_KEY])
    return host.exec(["cat", CLIENT_KEY + ".pub"]).stdout.strip()


def configure_target(host, address, authorized_key):
    """A formula host's own host key, sshd config and authorized key; returns its known_hosts line."""
    host.exec(["sh", "-c", 'mkdir -p "$1" && chmod 700 "$1" && test -f "$1/ssh_host_ed25519_key" || '
                           'ssh-keygen -q -t ed25519 -N "" -C "$2" -f "$1/ssh_host_ed25519_key"',
               "hostkey", SSH_DIR, host.name])
    put(host, f"{SSH_DIR}/sshd_config", SSHD_CONFIG.format(address=address, ssh_dir=SSH_DIR, pid=SSHD_PID))
    put(host, f"{SSH_DIR}/authorized_keys", authorized_key + "\n", mode="0600")
    key_type, key = host.exec(["cat", f"{SSH_DIR}/ssh_host_ed25519_key.pub"]).stdout.split()[:2]
    return f"{address} {key_type} {key}"


def start_sshd(host):
    """sshd in the host (it daemonizes; /run is a fresh tmpfs at every boot)."""
    host.exec(["sh", "-c", "mkdir -p /run/sshd && chmod 755 /run/sshd && "
                           f"/usr/sbin/sshd -t -f {SSH_DIR}/sshd_config && "
                           f"/usr/sbin/sshd -f {SSH_DIR}/sshd_config -E /var/log/hafw-lab-sshd.log"])


def configure_control(host, targets, known_hosts):
    """The salt host's roster (roster.example's entry shape) and known_hosts (named in master.d).

    targets: {node id: management address}; known_hosts: lines from configure_target.
    """
    template = next(iter(ROSTER_EXAMPLE.values()))
    roster = {node: {**template, "host": address} for node, address in targets.items()}
    put(host, SALTFILE["roster_file"], yaml.safe_dump(roster, sort_keys=True))
    put(host, KNOWN_HOSTS, "".join(line + "\n" for line in known_hosts))
    # the hafw wrapper derives each node on this host instead of over ssh (docs/salt-ssh.md)
    put(host, "/etc/salt/master.d/salt-ssh.conf", yaml.safe_dump({
        "known_hosts_file": KNOWN_HOSTS, "ssh_minion_opts": {"wrapper_dirs": [str(REPO / "_wrapper")]}}))


def wait_targets(host, node_ids, timeout=60):
    """Wait until salt-ssh reaches every node (test.ping); returns seconds waited."""
    start = time.monotonic()
    pending = set(node_ids)
    while pending:
        answers = salt_ssh(host, "-L", ",".join(sorted(pending)), "test.ping", timeout=120)
        pending -= {node for node, ok in answers.items() if ok is True}
        if pending and time.monotonic() - start > timeout:
            raise TimeoutError("salt-ssh cannot reach %s after %d s: %s" % (sorted(pending), timeout, answers))
        if pending:
            time.sleep(0.5)
    return time.monotonic() - start


def salt_ssh(host, *args, timeout=300):
    """`salt-ssh --out json ARGS...` from the repository in the salt host (so ./Saltfile is
    read); the parsed output ({} if none)."""
    cmd = f"cd {shlex.quote(str(REPO))} && exec {VENV_BIN / 'salt-ssh'} --out json " + shlex.join(args)
    return json_output(host.exec(["sh", "-c", cmd], check=False, timeout=timeout), "salt-ssh", args)
