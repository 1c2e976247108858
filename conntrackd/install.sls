# -*- coding: utf-8 -*-
# vim: ft=sls
{#- The distribution's package, or (install:method: source, as the seed did on
    CentOS 7.1 where conntrack-tools was not packaged) a build of the pillar's
    tarballs. Other states require this whole sls, whichever method it used. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import mapdata with context %}

{%- if mapdata.install.method == 'source' %}
include:
  - {{ tplroot }}.source
{%- elif mapdata.install.method == 'package' %}

hafw-conntrackd-pkgs-installed:
  pkg.installed:
    - pkgs: {{ mapdata.pkgs | json }}
{%- else %}
{{ raise("hafw:lookup:conntrackd:install:method: '" ~ mapdata.install.method
         ~ "' is neither 'package' nor 'source'") }}
{%- endif %}
