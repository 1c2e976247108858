# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Removes what hafw put in place: the live ruleset (iptables: nat and
    filter reset to empty accept-all chains; nftables: table ip hafw
    deleted, other tables untouched) and the persistent file, so nothing
    comes back at boot. Packages stay, the boot-time service stays enabled
    (with no file it loads nothing of ours) and firewalld stays masked: the
    administrator decides what filters the host next. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

{%- if node.firewall %}
{%- set backend = node.firewall.backend %}
{%- set conf = mapdata[backend] %}

hafw-iptables-ruleset-absent:
  netfilter_ruleset.absent:
    - name: {{ conf.rules_file }}
    - backend: {{ backend }}
{%- if backend == 'nftables' %}
    - family: {{ conf.family }}
    - table: {{ conf.table }}

hafw-iptables-nftables-include-absent:
  file.replace:
    - name: {{ conf.main_conf }}
    - pattern: {{ ('^' ~ ('include "' ~ conf.rules_file ~ '"') | regex_escape ~ '\n') | json }}
    - repl: ''
    - ignore_if_missing: true
{%- endif %}

hafw-iptables-rules-file-absent:
  file.absent:
    - name: {{ conf.rules_file }}
    - require:
      - netfilter_ruleset: hafw-iptables-ruleset-absent
{%- else %}

hafw-iptables-clean-not-managed:
  test.show_notification:
    - text: {{ (node.id ~ " has no firewall: no ruleset to remove") | json }}
{%- endif %}
