//! The oci driver's job file: a bundle, or a rootfs with a command; every
//! mistake located at its line and column and named by its field.

use super::*;

fn oci(config: &str) -> String {
    format!(
        "job \"j\" {{\n  group \"g\" {{\n    task \"t\" {{\n      driver = \"oci\"\n      config {{\n{config}\n      }}\n    }}\n  }}\n}}\n"
    )
}

/// Every error of a document, as `file:line:col: path: message`.
fn shown(src: &str) -> Vec<String> {
    match parse_str(src, "t.hcl") {
        Ok(job) => panic!("expected errors, got {job:?}"),
        Err(d) => d.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_bundle_or_a_rootfs_with_a_command_parses() {
    let job = parse_str(&oci("        bundle = \"/srv/b\""), "t.hcl").unwrap();
    let t = &job.groups[0].tasks[0];
    assert_eq!(t.driver, Driver::Oci);
    assert_eq!(t.config.bundle.as_deref(), Some("/srv/b"));
    assert_eq!(t.config.command, None);
    let job = parse_str(
        &oci("        rootfs  = \"/srv/r\"\n        command = \"/bin/sh\"\n        args    = [\"-c\", \"true\"]"),
        "t.hcl",
    )
    .unwrap();
    let c = &job.groups[0].tasks[0].config;
    assert_eq!(c.rootfs.as_deref(), Some("/srv/r"));
    assert_eq!(c.command.as_deref(), Some("/bin/sh"));
    assert_eq!(c.args, ["-c", "true"]);
    // The JSON form gives the same job.
    let json = r#"{"job": {"j": {"group": {"g": {"task": {"t": {
        "driver": "oci", "config": {"bundle": "/srv/b"}}}}}}}}"#;
    let job = parse_str(json, "j.json").unwrap();
    assert_eq!(
        job.groups[0].tasks[0].config.bundle.as_deref(),
        Some("/srv/b")
    );
}

#[test]
fn oci_mistakes_are_located_and_named() {
    assert_eq!(
        shown(&oci("        image = \"redis\"")),
        [
            "t.hcl:5:7: job.j.group.g.task.t.config: missing bundle or rootfs: the oci driver needs bundle = \"/path/to/bundle\" or rootfs = \"/path\" with command = \"...\"",
            "t.hcl:6:9: job.j.group.g.task.t.config.image: \"image\" is not a field of the oci driver (oci accepts: bundle, rootfs, command, args, writable)",
        ]
    );
    assert_eq!(
        shown(&oci("        bundel = \"/srv/b\"")),
        [
            "t.hcl:5:7: job.j.group.g.task.t.config: missing bundle or rootfs: the oci driver needs bundle = \"/path/to/bundle\" or rootfs = \"/path\" with command = \"...\"",
            "t.hcl:6:9: job.j.group.g.task.t.config.bundel: unknown attribute \"bundel\" (expected one of: image, command, args, hostname, labels, network_mode, dns_servers, dns_search_domains, port_map, ports, privileged, volumes, devices, cap_add, cap_drop, bundle, rootfs, writable)",
        ]
    );
    assert_eq!(
        shown(&oci("        bundle = \"srv/b\"\n        command = \"/bin/sh\"")),
        [
            "t.hcl:6:18: job.j.group.g.task.t.config.bundle: must be an absolute path, got \"srv/b\"",
            "t.hcl:7:9: job.j.group.g.task.t.config.command: \"command\" is not taken with a bundle: the command is its config.json's process.args",
        ]
    );
    assert_eq!(
        shown(&oci("        bundle = \"/b\"\n        rootfs = \"/r\"")),
        ["t.hcl:7:9: job.j.group.g.task.t.config.rootfs: bundle and rootfs exclude each other: a bundle's root is its config.json's root.path"]
    );
    assert_eq!(
        shown(&oci("        rootfs = \"/r\"")),
        ["t.hcl:5:7: job.j.group.g.task.t.config: missing command: the oci driver with a rootfs needs command = \"/path/in/rootfs\""]
    );
    assert_eq!(
        shown("job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"oci\"\n    }\n  }\n}\n"),
        ["t.hcl:3:5: job.j.group.g.task.t: missing config { bundle = \"/path\" } (or { rootfs = \"/path\", command = \"...\" }) block"]
    );
    // The oci fields are no other driver's.
    assert_eq!(
        shown("job \"j\" {\n  group \"g\" {\n    task \"t\" {\n      driver = \"exec\"\n      config {\n        command = \"/bin/true\"\n        rootfs = \"/r\"\n      }\n    }\n  }\n}\n"),
        ["t.hcl:7:9: job.j.group.g.task.t.config.rootfs: \"rootfs\" is not a field of the exec driver (exec accepts: command, args)"]
    );
}
