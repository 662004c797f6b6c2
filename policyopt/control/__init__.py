"""Control: Gymnasium vector environments, normalizers, actor-critic networks and trainers."""
