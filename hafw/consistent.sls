# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The last word of a pair node's run: conntrackd's side (a load balancer:
    its IPVS sync daemon and virtual services) matches the VRRP role
    keepalived gave the node (vrrp_sync.consistent, issues 4 and 6).
    It runs the transition the hook missed, e.g. a notify lost to an SELinux
    denial as in the seed; a consistent node reports no change. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- set parts = ['conntrackd', 'keepalived'] if 'conntrackd' in node.components else ['keepalived'] %}

include:
{%- for part in parts %}
  - {{ part }}
{%- endfor %}

hafw-vrrp-sync-consistent:
  vrrp_sync.consistent:
    - name: {{ (node.vrrp.sync_group or node.cluster) | json }}
    - require:
{%- for part in parts %}
      - sls: {{ part }}
{%- endfor %}
