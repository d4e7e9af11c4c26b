//! cgroups as plain files (v1, v2, hybrid).
