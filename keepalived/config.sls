# -*- coding: utf-8 -*-
# vim: ft=sls
{#- keepalived.conf, checked with `keepalived -t` before it replaces the live
    file, and the directory of the notify FIFO. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- set fifo_dir = salt['file.dirname'](mapdata.notify_fifo) %}
{#- the part of the node the template prints (the whole node would put the
    firewall ruleset into this state's arguments too) #}
{%- set context_node = {'id': node.id, 'cluster': node.cluster, 'role': node.role,
                        'vrrp': node.vrrp, 'lvs': node.get('lvs')} %}

include:
  - {{ tplroot }}.install

{#- keepalived makes the FIFO, not its directory ("Unable to create vrrp_notify
    fifo" otherwise); the tmpfiles.d entry makes it again after a reboot. #}
hafw-keepalived-fifo-dir:
  file.directory:
    - name: {{ fifo_dir }}
    - user: root
    - group: root
    - mode: '0750'

{#- the persistent demote file's directory (track_file's init_file makes the
    file, not the directory); the other maintenance files live in fifo_dir #}
hafw-keepalived-maintenance-dir:
  file.directory:
    - name: {{ salt['file.dirname'](mapdata.maintenance.demote_persistent_file) }}
    - user: root
    - group: root
    - mode: '0750'
    - makedirs: true

hafw-keepalived-fifo-dir-at-boot:
  file.managed:
    - name: {{ mapdata.tmpfiles }}
    - source: salt://{{ tplroot }}/files/tmpfiles.conf.jinja
    - template: jinja
    - context: {{ {'mapdata': mapdata, 'fifo_dir': fifo_dir} | json }}
    - user: root
    - group: root
    - mode: '0644'

{%- set ipvs_hold = (node.get('lvs') or {}).get('ipvs_hold') %}
{%- if ipvs_hold %}

{#- the load balancers' resync hold (vrrp_script hafw_ipvs_hold): keepalived
    -t refuses a config whose script is missing, and keepalived runs a script
    only if root owns it and its directories and no one else can write them #}
hafw-keepalived-ipvs-hold-script:
  file.managed:
    - name: {{ mapdata.ipvs_hold.script }}
    - source: salt://{{ tplroot }}/files/hafw-ipvs-hold.sh
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true
{%- endif %}

{#- file.managed writes the candidate to a temp file, runs check_cmd with that
    file's path appended ("keepalived -t -f /tmp/__salt.tmp.XXX"), and only if
    it exits 0 writes it to the live file; otherwise the state fails with
    keepalived's messages, the live file stays, and the service is not
    reloaded. The check runs only when the file would change.
    sort_keys=False: pass-through options and health-check parameters keep
    the pillar's order (the seed's SMTP_CHECK order). #}
hafw-keepalived-config:
  file.managed:
    - name: {{ mapdata.config }}
    - source: salt://{{ tplroot }}/files/keepalived.conf.jinja
    - template: jinja
    - context: {{ {'node': context_node, 'mapdata': mapdata} | json(sort_keys=False) }}
    - user: root
    - group: root
    - mode: '0640'
    - makedirs: true
    - check_cmd: {{ (mapdata.bin ~ ' -t -f') | json }}
    - require:
      - pkg: hafw-keepalived-installed
      - file: hafw-keepalived-fifo-dir
      - file: hafw-keepalived-maintenance-dir
{%- if ipvs_hold %}
      - file: hafw-keepalived-ipvs-hold-script
{%- endif %}
