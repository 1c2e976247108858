# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

hafw-selinux-tools-installed:
  pkg.installed:
    - pkgs: {{ mapdata.packages | json }}
