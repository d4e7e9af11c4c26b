allow_groups = ["tend"]
task_users = ["nobody"]
chroot_sources = ["/bin", "/usr"]
cgroup_parent = "tend"
data_roots = ["/srv/tend"]
run_roots = ["/run/tend-user"] # c
max_memory_mb = 4096
max_pids = 1024
