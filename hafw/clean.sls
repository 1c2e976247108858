# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Removes what hafw manages on this node, in reverse apply order. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- if node.components %}
include:
{%- for component in node.components | reverse %}
  - {{ component }}.clean
{%- endfor %}
{%- else %}

hafw-clean-node-in-no-cluster:
  test.show_notification:
    - text: {{ (node.id ~ " is in no hafw cluster: nothing to remove") | json }}
{%- endif %}
