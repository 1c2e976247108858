# -*- coding: utf-8 -*-
# vim: ft=sls
{#- keepalived: VRRP for both pair roles, LVS for load balancers. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- if 'keepalived' in node.components %}
include:
  - {{ tplroot }}.install
  - {{ tplroot }}.config
  - {{ tplroot }}.service
{%- else %}

hafw-keepalived-not-managed:
  test.show_notification:
    - text: {{ ("keepalived not managed on " ~ node.id ~ ": it is in no VRRP pair") | json }}
{%- endif %}
