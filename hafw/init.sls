# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The role dispatcher: applies the components this node's cluster needs, in
    dependency order (the order comes from the model: node.components). A
    firewall pair gets kernel, selinux, iptables, conntrackd, keepalived; a
    standalone firewall kernel and iptables; a load-balancer pair kernel,
    selinux and keepalived. A pair node (firewall or load balancer) ends with
    hafw.consistent. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import node with context %}

{%- if node.components %}
include:
{%- for component in node.components %}
  - {{ component }}
{%- endfor %}
{%-   if node.get('vrrp') and 'keepalived' in node.components and ('conntrackd' in node.components or node.get('lvs')) %}
  - {{ tplroot }}.consistent
{%-   endif %}
{%- else %}

hafw-node-in-no-cluster:
  test.show_notification:
    - text: {{ (node.id ~ " is in no hafw cluster (pillar hafw:clusters): nothing to manage") | json }}
{%- endif %}
