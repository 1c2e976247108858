# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The service that loads the persistent file at boot, enabled. It is not
    (re)started: config.sls already applied the ruleset, and a restart would
    briefly flush it. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

{%- if node.firewall %}
{%- set conf = mapdata[node.firewall.backend] %}

include:
  - {{ tplroot }}.install

hafw-iptables-service-enabled:
  service.enabled:
    - name: {{ conf.service }}
    - require:
      - pkg: hafw-iptables-installed
{%- else %}

hafw-iptables-service-not-managed:
  test.show_notification:
    - text: {{ (node.id ~ " has no firewall: no boot-time ruleset service to enable") | json }}
{%- endif %}
