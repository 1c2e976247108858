# -*- coding: utf-8 -*-
# vim: ft=sls
# Top file for running straight from this repository (the lab, make render):
# every minion gets the hafw dispatcher, which manages nothing on a minion
# that is in no cluster of pillar hafw:clusters. In your own deployment, add
# `- hafw` to your top file instead.
base:
  '*':
    - hafw
