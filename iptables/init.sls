# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The node's whole ruleset: packages (and no firewalld), the persistent
    file loaded at boot, applied live in one transaction when it drifted,
    and the boot-time service enabled. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- if 'iptables' in node.components %}
include:
  - {{ tplroot }}.install
  - {{ tplroot }}.config
  - {{ tplroot }}.service
{%- else %}

hafw-iptables-not-managed:
  test.show_notification:
    - text: {{ ("Ruleset not managed on " ~ node.id ~ ": its cluster has no firewall: section") | json }}
{%- endif %}
