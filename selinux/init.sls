# -*- coding: utf-8 -*-
# vim: ft=sls
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

{%- if 'selinux' in node.components and mapdata.active %}
include:
  - {{ tplroot }}.install
  - {{ tplroot }}.config
{%- else %}

hafw-selinux-not-managed:
  test.show_notification:
    - text: {{ ("SELinux policy not managed on " ~ node.id ~ ": " ~ (
        "SELinux is not supported or not enabled on this system" if 'selinux' in node.components
        else "its role needs no SELinux policy")) | json }}
{%- endif %}
