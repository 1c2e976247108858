# -*- coding: utf-8 -*-
# vim: ft=sls
{#- keepalived running and enabled. A changed keepalived.conf is applied with
    a reload (SIGHUP: Debian's init script and both units send it), never a
    restart: a restart drops the VIPs and fails over. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

include:
  - {{ tplroot }}.config

hafw-keepalived-running:
  service.running:
    - name: {{ mapdata.service.name }}
    - enable: true
    - reload: true
{%- if mapdata.service.get('sig') %}
    - sig: {{ mapdata.service.sig | json }}
{%- endif %}
    - watch:
      - file: hafw-keepalived-config
