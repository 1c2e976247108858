# -*- coding: utf-8 -*-
# vim: ft=sls
{#- Every node's kernel settings: modules first (a sysctl such as
    net.netfilter.nf_conntrack_max exists only once nf_conntrack is loaded),
    then sysctls (ip_forward, conntrack sizing), then static routes. #}
{%- set tplroot = tpldir.split('/')[0] %}

include:
  - {{ tplroot }}.modules
  - {{ tplroot }}.sysctl
  - {{ tplroot }}.routes
