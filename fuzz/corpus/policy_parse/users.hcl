# empty
// too

allow_users = ["alice", "1000"]
cgroup_parent = "a\"b"
