# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The daemon, running and enabled, restarted when conntrackd.conf changes
    (conntrackd has no reload: it reads its configuration only at start).

    A restart must not lose replicated state. What a restart empties, and
    what refills it (checked against conntrackd 1.4.7 in
    test/functional/test_conntrackd_config.py):
    - the restarted node's internal cache (its own connections): conntrackd
      dumps the kernel table into it at start, by itself;
    - its external cache (the peer's connections): `StartupResync on` in
      conntrackd.conf makes it ask the peer for a full resync at every start,
      the same request as `conntrackd -n`. Being in the daemon, it also
      covers restarts that Salt does not do (a crash restarted by systemd, a
      reboot), so Salt does not run `-n` itself;
    - the PEER's external cache misses the connections this node created
      while its daemon was down: the start-up dump does not send them, and
      an idle established connection sends no event. On the primary (the
      hook's state file says so) Salt therefore runs `-B` after a restart,
      the bulk send the hook runs on becoming primary. A backup does not:
      its kernel table holds no connection the primary lacks. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}
{%- set ctd_bin = mapdata.install.source.prefix ~ '/sbin/conntrackd'
                  if mapdata.install.method == 'source' else mapdata.bin %}
{%- set daemon_dirs = [salt['file.dirname'](mapdata.config.lock_file),
                       salt['file.dirname'](mapdata.config.socket)] | unique | list %}
{#- Without systemd, Salt asks the init script for the status, and Debian's
    /etc/init.d/conntrackd has no "status": find the daemon by its command
    line instead (init script: BIN -d -C CONF; systemd unit: BIN -C CONF;
    the hook: BIN -C CONF -d), never a client (BIN -C CONF -s ...).
    systemd's service module ignores it. #}
{%- set sig = (ctd_bin | regex_escape) ~ '( -d)? -C ' ~ (mapdata.config.path | regex_escape) ~ '( -d)?$' %}

include:
  - {{ tplroot }}.config

{#- conntrackd creates its lock file and UNIX socket but not their
    directories (/run is a fresh tmpfs at boot); only their existence is
    managed, not the modes of these shared system directories #}
hafw-conntrackd-daemon-dirs:
  file.directory:
    - names: {{ daemon_dirs | json }}
    - makedirs: true

hafw-conntrackd-service-running:
  service.running:
    - name: {{ mapdata.service.name }}
    - enable: true
    - sig: {{ sig | json }}
    - require:
      - sls: {{ tplroot }}.install
      - file: hafw-conntrackd-daemon-dirs
    - watch:
      - file: hafw-conntrackd-config
{%- if mapdata.install.method == 'source' %}
      {#- a new build, or a changed unit: run the new binary #}
      - cmd: hafw-conntrackd-source-built
      - file: hafw-conntrackd-source-unit
{%- endif %}

{#- Only after a (re)start, and only on the primary: send this node's
    connections to the peer (see above). The daemon answers as soon as the
    init script or systemd returns: it forks (or notifies) after its
    initialisation. The command is one string of shell-quoted words: Salt 3008's
    cmd.run replaces a `name` that is not a string by the state ID, and always
    runs it through a shell (python_shell is not an option of the state), so
    quoting each word is what keeps it an argument list. #}
hafw-conntrackd-bulk-send-after-restart:
  cmd.run:
    - name: {{ [ctd_bin, '-C', mapdata.config.path, '-B'] | map('quote') | join(' ') | json }}
    - timeout: {{ mapdata.hook.timeout_s }}
    - onlyif:
      - fun: file.contains_regex
        args:
          - {{ mapdata.hook.state_file | json }}
          - '^primary\b'
    - onchanges:
      - service: hafw-conntrackd-service-running

{#- Inject mode: a backup's refresh loop is started by its backup transition;
    after a restart or a new hook (a switch to inject mode) on a running
    backup no transition comes, so ask the hook to start it (it does nothing
    unless the node is backup in inject mode, and never runs two loops) #}
hafw-conntrackd-refresh-loop-after-restart:
  cmd.run:
    - name: {{ [mapdata.hook.path, 'refresh-start'] | map('quote') | join(' ') | json }}
    - timeout: 10
    - onlyif:
      - fun: file.contains_regex
        args:
          - {{ mapdata.hook.state_file | json }}
          - '^backup\b'
    - onchanges:
      - service: hafw-conntrackd-service-running
      - file: hafw-conntrackd-hook
