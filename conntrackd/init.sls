# -*- coding: utf-8 -*-
# vim: ft=sls
{#- conntrackd on a firewall pair: package (or source build), conntrackd.conf
    and keepalived's transition hook, the running daemon. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- if 'conntrackd' in node.components %}
include:
  - {{ tplroot }}.install
  - {{ tplroot }}.config
  - {{ tplroot }}.service
{%- else %}

hafw-conntrackd-not-managed:
  test.show_notification:
    - text: {{ ("conntrackd not managed on " ~ node.id ~ ": only a firewall pair whose cluster "
                ~ "has conntrackd (hafw:clusters:<name>:conntrackd) runs it") | json }}
{%- endif %}
