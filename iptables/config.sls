# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The persistent ruleset file (what the boot-time service loads), then the
    same file applied live, in one transaction, only when the live ruleset
    differs (_states/netfilter_ruleset.py). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

{%- if node.firewall %}
{%- set backend = node.firewall.backend %}
{%- set conf = mapdata[backend] %}

include:
  - {{ tplroot }}.install

{#- check_cmd tests the new text in a temp file before it replaces the old
    one: a ruleset the kernel refuses never becomes the file, and then
    nothing below runs. #}
hafw-iptables-rules-file:
  file.managed:
    - name: {{ conf.rules_file }}
    - source: salt://{{ tplroot }}/files/ruleset.{{ backend }}.jinja
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
    - user: root
    - group: root
    - mode: {{ conf.rules_mode | json }}
    - makedirs: true
    - check_cmd: {{ conf.check_cmd | json }}
    - require:
      - sls: {{ tplroot }}.install

{%- if backend == 'nftables' %}

{#- The nftables service loads main_conf at boot; it includes our script.
    The distribution's file is kept as it is, only this line is added. #}
hafw-iptables-nftables-include:
  file.append:
    - name: {{ conf.main_conf }}
    - text: {{ ('include "' ~ conf.rules_file ~ '"') | json }}
    - require:
      - file: hafw-iptables-rules-file
{%- endif %}

hafw-iptables-ruleset-applied:
  netfilter_ruleset.applied:
    - name: {{ conf.rules_file }}
    - backend: {{ backend }}
{%- if node.firewall.gate %}
    {#- the jump into the takeover gate belongs to the transition hook: it is
        not drift, and after a restore (which drops it) the hook puts it back
        on a node that is not primary (docs/takeover.md) #}
    - ignore_live:
      - {{ node.firewall.gate_jump | json }}
    - on_applied:
      - {{ mapdata.gate_sync_hook | json }}
      - gate-sync
{%- endif %}
{%- if backend == 'nftables' %}
    - family: {{ conf.family }}
    - table: {{ conf.table }}
{%- endif %}
    - require:
      - file: hafw-iptables-rules-file
{%- else %}

hafw-iptables-config-not-managed:
  test.show_notification:
    - text: {{ (node.id ~ " has no firewall: no ruleset to manage") | json }}
{%- endif %}
