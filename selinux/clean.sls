# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Removes the policy module; booleans are left as they are (other software
    may rely on them). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

{%- if mapdata.active %}

hafw-selinux-module-removed:
  selinux.module:
    - name: {{ mapdata.module_name }}
    - install: false
    - remove: true

hafw-selinux-build-dir-absent:
  file.absent:
    - name: {{ mapdata.build_dir }}
{%- else %}

hafw-selinux-clean-not-managed:
  test.show_notification:
    - text: SELinux is not enabled here; nothing to remove
{%- endif %}
