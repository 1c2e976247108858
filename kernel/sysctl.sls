# -*- coding: utf-8 -*-
# vim: ft=sls
{#- node.kernel.sysctl: persisted in sysctl.d (applied at boot) and set live
    with hafw_sysctl.present, which tolerates a sysctl that is read-only
    here (nf_conntrack_max in a network namespace) when its live value
    already satisfies the request, and fails clearly when it does not. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata, node with context %}

include:
  - {{ tplroot }}.modules

hafw-kernel-sysctl-file:
  file.managed:
    - name: {{ mapdata.sysctl_file }}
    - source: salt://{{ tplroot }}/files/sysctl.conf.jinja
    - template: jinja
    - context:
        node: {{ node | json }}
        mapdata: {{ mapdata | json }}
    - user: root
    - group: root
    - mode: '0644'
    - makedirs: true
{%- for key, value in node.kernel.sysctl | dictsort %}

hafw-kernel-sysctl-{{ key }}:
  hafw_sysctl.present:
    - name: {{ key }}
    - value: {{ value | json }}
    - require:
      - hafw-kernel-modules-loaded
{%- endfor %}
