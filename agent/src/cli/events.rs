//! `tend events [-f] [--alloc ALLOC] [--task TASK] [--json]`: what happened to
//! the tasks, oldest first: the events each task keeps, then (with -f) each
//! new one as it comes, until Ctrl-C.

use std::io::Write;

use super::client::{enc, ApiClient};
use crate::api::wire::{EventList, EventView};

/// Run `tend events`.
pub async fn run(
    client: &ApiClient,
    alloc: Option<&str>,
    task: Option<&str>,
    follow: bool,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    let mut filter = String::new();
    if let Some(a) = alloc {
        filter.push_str(&format!("&alloc={}", enc(a)));
    }
    if let Some(t) = task {
        filter.push_str(&format!("&task={}", enc(t)));
    }
    // The stream first, so that nothing between the two is missed; an event
    // in both is printed once.
    let mut stream = if follow {
        Some(
            client
                .stream(&format!("/v1/events?follow=true{filter}"))
                .await?,
        )
    } else {
        None
    };
    let kept: EventList = serde_json::from_value(
        client
            .get(&format!("/v1/events?follow=false{filter}"))
            .await?,
    )?;
    for e in &kept.events {
        print_event(e, json, out)?;
    }
    out.flush()?;
    let Some(stream) = stream.as_mut() else {
        return Ok(0);
    };
    let mut pending = Vec::new();
    while let Some(part) = stream.next().await? {
        pending.extend_from_slice(&part);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let Ok(e) = serde_json::from_slice::<EventView>(&line) else {
                // `{"lagged": N}`: the agent dropped events for a slow reader.
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                    if let Some(n) = v.get("lagged") {
                        eprintln!("tend: {n} events were dropped: this reader fell behind");
                    }
                }
                continue;
            };
            if kept.events.contains(&e) {
                continue;
            }
            print_event(&e, json, out)?;
            out.flush()?;
        }
    }
    Ok(0)
}

/// One line: `TIME ALLOC TASK KIND MESSAGE`, or the event as JSON.
fn print_event(e: &EventView, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string(e)?)?;
    } else {
        let short: String = e.alloc_id.chars().take(8).collect();
        writeln!(
            out,
            "{}  {short}  {}  {}  {}",
            e.time, e.task, e.kind, e.message
        )?;
    }
    Ok(())
}
