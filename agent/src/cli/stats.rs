//! `tend stats [ALLOC] [-f] [--json]`: what the tasks of one allocation, or
//! of every running one, use: a table like `docker stats`, or the API's JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{enc, table, ApiClient};

/// Between two samples: CPU % is the CPU time used in it.
const INTERVAL: Duration = Duration::from_secs(1);

/// Run `tend stats`.
pub async fn run(
    client: &ApiClient,
    alloc: Option<&str>,
    follow: bool,
    json_out: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let mut prev = sample(client, alloc).await?;
    if json_out && !follow {
        let v = match alloc {
            Some(_) => prev.into_iter().next().unwrap_or(Value::Null),
            None => json!({ "allocations": prev }),
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(0);
    }
    loop {
        if json_out {
            for v in &prev {
                writeln!(out, "{v}")?;
            }
            out.flush()?;
            tokio::time::sleep(INTERVAL).await;
            prev = sample(client, alloc).await?;
            continue;
        }
        tokio::time::sleep(INTERVAL).await;
        let cur = sample(client, alloc).await?;
        let text = table(&rows(&prev, &cur));
        if follow {
            // Home and clear, as `watch` does, then the new table.
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            write!(out, "{text}")?;
        }
        out.flush()?;
        if !follow {
            return Ok(0);
        }
        prev = cur;
    }
}

/// The stats of the allocation asked for, or of every running one.
async fn sample(client: &ApiClient, alloc: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let ids: Vec<String> = match alloc {
        Some(a) => vec![a.to_string()],
        None => {
            let list = client.get("/v1/allocations").await?;
            list["allocations"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["status"] == "running")
                .filter_map(|a| a["id"].as_str().map(String::from))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match client
            .get(&format!("/v1/allocations/{}/stats", enc(&id)))
            .await
        {
            Ok(v) => out.push(v),
            // Collected between the list and this ask: it is not running.
            Err(e) if alloc.is_none() && e.to_string().contains("no allocation") => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The table: one row per task of `cur`, CPU % from its change since `prev`.
pub fn rows(prev: &[Value], cur: &[Value]) -> Vec<Vec<String>> {
    let mut before: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for a in prev {
        for t in a["tasks"].as_array().into_iter().flatten() {
            if let (Some(at), Some(cpu)) = (a["at_ms"].as_u64(), t["cpu"]["usage_us"].as_u64()) {
                before.insert(key(a, t), (at, cpu));
            }
        }
    }
    let mut rows = vec![[
        "ALLOC",
        "TASK",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "PIDS",
        "IO R / W",
        "PSI SOME AVG10 CPU/MEM/IO",
    ]
    .map(String::from)
    .to_vec()];
    for a in cur {
        for t in a["tasks"].as_array().into_iter().flatten() {
            let cpu = match (
                before.get(&key(a, t)),
                a["at_ms"].as_u64(),
                t["cpu"]["usage_us"].as_u64(),
            ) {
                (Some(&(at0, cpu0)), Some(at1), Some(cpu1)) if at1 > at0 => {
                    let used = cpu1.saturating_sub(cpu0) as f64;
                    format!("{:.2}%", used / ((at1 - at0) as f64 * 1000.0) * 100.0)
                }
                _ => "-".into(),
            };
            let mem = &t["memory"];
            let (current, limit) = (mem["current"].as_u64(), mem["limit"].as_u64());
            let mem_pct = match (current, limit) {
                (Some(c), Some(l)) if l > 0 => format!("{:.2}%", c as f64 / l as f64 * 100.0),
                _ => "-".into(),
            };
            let io = &t["io"];
            let psi = |r: &str| match t["psi"][r]["some"]["avg10"].as_f64() {
                Some(p) => format!("{p:.2}"),
                None => "-".into(),
            };
            rows.push(vec![
                a["id"].as_str().unwrap_or("-").chars().take(8).collect(),
                t["task"].as_str().unwrap_or("-").to_string(),
                cpu,
                format!("{} / {}", bytes(current), bytes(limit)),
                mem_pct,
                t["pids"].as_u64().map_or("-".into(), |p| p.to_string()),
                format!(
                    "{} / {}",
                    bytes(io["read_bytes"].as_u64()),
                    bytes(io["write_bytes"].as_u64())
                ),
                format!("{}/{}/{}", psi("cpu"), psi("memory"), psi("io")),
            ]);
        }
    }
    rows
}

fn key(a: &Value, t: &Value) -> (String, String) {
    (
        a["id"].as_str().unwrap_or_default().to_string(),
        t["task"].as_str().unwrap_or_default().to_string(),
    )
}

/// 1536 as "1.5KiB"; None as "-".
fn bytes(n: Option<u64>) -> String {
    let Some(n) = n else { return "-".into() };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(at_ms: u64, usage_us: u64) -> Value {
        json!({
            "id": "0123456789abcdef",
            "at_ms": at_ms,
            "tasks": [{
                "task": "web",
                "cpu": {"usage_us": usage_us},
                "memory": {"current": 52_428_800u64, "limit": 104_857_600u64},
                "pids": 3,
                "io": {"read_bytes": 1536, "write_bytes": null},
                "psi": {"cpu": {"some": {"avg10": 1.25}}, "memory": null, "io": null},
            }],
        })
    }

    #[test]
    fn a_row_like_docker_stats() {
        // Half a CPU second in one wall second is 50 %.
        let r = rows(&[alloc(1000, 100_000)], &[alloc(2000, 600_000)]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[1],
            [
                "01234567",
                "web",
                "50.00%",
                "50.0MiB / 100.0MiB",
                "50.00%",
                "3",
                "1.5KiB / -",
                "1.25/-/-"
            ]
            .map(String::from)
            .to_vec()
        );
    }

    #[test]
    fn no_earlier_sample_no_cpu_percent() {
        let r = rows(&[], &[alloc(2000, 600_000)]);
        assert_eq!(r[1][2], "-");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(Some(512)), "512B");
        assert_eq!(bytes(Some(3 << 30)), "3.0GiB");
        assert_eq!(bytes(None), "-");
    }
}
