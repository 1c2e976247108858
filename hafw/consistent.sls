# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The last word of a firewall pair node's run: conntrackd's side matches
    the VRRP role keepalived gave the node (vrrp_sync.consistent, issue 4).
    It runs the transition the hook missed, e.g. a notify lost to an SELinux
    denial as in the seed; a consistent node reports no change. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

include:
  - conntrackd
  - keepalived

hafw-vrrp-sync-consistent:
  vrrp_sync.consistent:
    - name: {{ (node.vrrp.sync_group or node.cluster) | json }}
    - require:
      - sls: conntrackd
      - sls: keepalived
