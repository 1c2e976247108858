# -*- coding: utf-8 -*-
# vim: ft=sls
{#- keepalived, plus ipvsadm on load balancers (to inspect the IPVS tables
    keepalived builds). The kernel tree loads ip_vs. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}
{%- set packages = mapdata.packages + (mapdata.lvs_packages if node.get('lvs') else []) %}

hafw-keepalived-installed:
  pkg.installed:
    - pkgs: {{ packages | json }}
