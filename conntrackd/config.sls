# -*- coding: utf-8 -*-
# vim: ft=sls
{#- conntrackd.conf (checked by conntrackd itself before it replaces the old
    file) and keepalived's transition hook with the directory of its state
    file. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- set ctd_bin = mapdata.install.source.prefix ~ '/sbin/conntrackd'
                  if mapdata.install.method == 'source' else mapdata.bin %}
{%- set dirs = [salt['file.dirname'](mapdata.config.path),
                salt['file.dirname'](mapdata.hook.path)] | unique | list %}
{%- set state_dir = salt['file.dirname'](mapdata.hook.state_file) %}
{#- conntrackd has no "test the configuration" mode, but its client mode
    (`-C FILE -s`) parses the whole file before it connects to the daemon's
    UNIX socket: a syntax error or an unknown key fails there, with the line.
    The candidate's socket path is first pointed at a path that cannot exist,
    so the check never talks to the running daemon (and cannot hang on it):
    "can't connect" then means the file parsed. Salt appends the candidate
    file's path: it is $1, the binary is $0. Only the binary is interpolated,
    quoted. #}
{%- set check_script = 'sed "s|^\\([[:space:]]*Path\\)[[:space:]].*|\\1 /nonexistent/hafw-check.ctl|" "$1" >"$1.check" || exit 1; '
                       ~ 'out=$("$0" -C "$1.check" -s 2>&1); rm -f "$1.check"; '
                       ~ 'case $out in *"t connect: is conntrackd running"*) exit 0 ;; esac; '
                       ~ 'printf "conntrackd rejects the new configuration:\\n%s\\n" "$out"; exit 1' %}

include:
  - {{ tplroot }}.install

{#- keepalived's enable_script_security refuses a hook in a directory that
    is not root-owned or is writable by others #}
hafw-conntrackd-config-dirs:
  file.directory:
    - names: {{ dirs | json }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true

hafw-conntrackd-config:
  file.managed:
    - name: {{ mapdata.config.path }}
    - source: salt://{{ tplroot }}/files/conntrackd.conf.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0644'
    - context:
        node: {{ {"id": node.id, "conntrackd": node.conntrackd} | json }}
        mapdata: {{ mapdata | json }}
    - check_cmd: {{ ("/bin/sh -c " ~ (check_script | quote) ~ " " ~ (ctd_bin | quote)) | json }}
    - require:
      - sls: {{ tplroot }}.install
      - file: hafw-conntrackd-config-dirs

{%- if mapdata.hook.create_state_dir %}

{#- /run is a tmpfs: create the hook's state directory now, and at every boot
    (systemd-tmpfiles); the hook also creates it if it is missing #}
hafw-conntrackd-state-dir:
  file.directory:
    - name: {{ state_dir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true

hafw-conntrackd-state-dir-tmpfiles:
  file.managed:
    - name: {{ mapdata.tmpfiles_dir }}/hafw-conntrackd.conf
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
    - contents: |
        # Managed by Salt (hafw formula): the conntrackd hook's state directory.
        d {{ state_dir }} 0755 root root -
{%- endif %}

{#- keepalived runs the hook as root: root-owned and not writable by others,
    or enable_script_security refuses to run it #}
hafw-conntrackd-hook:
  file.managed:
    - name: {{ mapdata.hook.path }}
    - source: salt://{{ tplroot }}/files/primary-backup.sh.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: '0755'
    - context:
        conntrackd_bin: {{ ctd_bin | json }}
        config_path: {{ mapdata.config.path | json }}
        log_file: {{ mapdata.hook.log_file | json }}
        state_file: {{ mapdata.hook.state_file | json }}
        {#- the larger of the platform default and what a full table's commit needs #}
        timeout_s: {{ [mapdata.hook.timeout_s, node.conntrackd.hook_timeout_s] | max | json }}
        start_if_down: {{ mapdata.hook.start_if_down | json }}
        {#- the takeover gate (docs/takeover.md); empty: no gate #}
        gate_chain: {{ node.conntrackd.gate_chain | json }}
        gate_table: {{ node.conntrackd.gate_table | json }}
        gate_backend: {{ node.conntrackd.gate_backend | json }}
        iptables_bin: {{ mapdata.hook.iptables_bin | json }}
        nft_bin: {{ mapdata.hook.nft_bin | json }}
        {#- DisableExternalCache: nothing to commit; a backup refreshes #}
        inject: {{ ('yes' if node.conntrackd.disable_external_cache else 'no') | json }}
        refresh_s: {{ node.conntrackd.inject_refresh_s | json }}
        hold_max_s: {{ node.conntrackd.hold_max_s | json }}
    - require:
      - file: hafw-conntrackd-config-dirs

{#- created with a mode that keeps it root's (the hook would create it with
    its umask 022); its content is the hook's, never replaced #}
hafw-conntrackd-hook-log:
  file.managed:
    - name: {{ mapdata.hook.log_file }}
    - replace: false
    - user: root
    - group: root
    - mode: '0640'
