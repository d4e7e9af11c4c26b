//! Host ports for allocations: static ports checked free, dynamic ports picked
//! free from a range, and never handed to two live allocations.
//!
//! "Free" is a bind test: a port is taken when binding it on 0.0.0.0 fails for
//! TCP or for UDP. The allocator also keeps every port it handed out in a set
//! until the allocation is released, because a task may not have bound its
//! port yet when the next allocation asks. A restarted agent rebuilds that set
//! from the ports persisted in the state of its live allocations
//! ([`PortAllocator::with_live`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::jobspec::Port;

/// The default range of dynamic ports, as Nomad's.
pub const DEFAULT_DYNAMIC_RANGE: RangeInclusive<u16> = 20000..=32000;

/// A port given to a task; persisted in the allocation's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignedPort {
    /// `port "LABEL"`.
    pub label: String,
    /// The host address tasks advertise (`TEND_IP_<label>`).
    pub host_ip: IpAddr,
    /// The host port (`TEND_HOST_PORT_<label>`).
    pub host_port: u16,
    /// `to = N`: the port inside a container (docker's port map).
    pub to: Option<u16>,
}

/// Why ports could not be given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    /// The dynamic range is empty or starts at 0.
    #[error("bad dynamic port range {start}-{end}")]
    BadRange {
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// A static port is held by another live allocation.
    #[error("static port {port} of \"{label}\" is already given to allocation {holder}")]
    StaticReserved {
        /// Port label.
        label: String,
        /// The port.
        port: u16,
        /// The allocation holding it.
        holder: String,
    },
    /// A static port is in use by some process on the host.
    #[error("static port {port} of \"{label}\" is in use on the host")]
    StaticInUse {
        /// Port label.
        label: String,
        /// The port.
        port: u16,
    },
    /// The same static port is asked twice in one request.
    #[error("static port {port} is asked twice")]
    StaticTwice {
        /// The port.
        port: u16,
    },
    /// No free port left in the dynamic range.
    #[error("no free dynamic port left in {start}-{end} for \"{label}\"")]
    Exhausted {
        /// Port label.
        label: String,
        /// First port of the range.
        start: u16,
        /// Last port of the range.
        end: u16,
    },
}

/// Hands out host ports to allocations. Shareable between threads.
#[derive(Debug)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    host_ip: IpAddr,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// port -> allocation id holding it.
    reserved: BTreeMap<u16, String>,
    /// Where the next dynamic search starts, so a released port is not reused at once.
    next: u16,
}

impl PortAllocator {
    /// An allocator over `range`, advertising `host_ip` to tasks (the agent's
    /// configured address; 127.0.0.1 by default in the agent config).
    pub fn new(range: RangeInclusive<u16>, host_ip: IpAddr) -> Result<Self, PortError> {
        Self::with_live(range, host_ip, std::iter::empty::<(String, Vec<u16>)>())
    }

    /// An allocator that knows the ports of allocations still alive (read
    /// from their persisted state), so it never hands them out again.
    pub fn with_live<I, P>(
        range: RangeInclusive<u16>,
        host_ip: IpAddr,
        live: I,
    ) -> Result<Self, PortError>
    where
        I: IntoIterator<Item = (String, P)>,
        P: IntoIterator<Item = u16>,
    {
        let (start, end) = (*range.start(), *range.end());
        if start == 0 || start > end {
            return Err(PortError::BadRange { start, end });
        }
        let mut inner = Inner {
            reserved: BTreeMap::new(),
            next: start,
        };
        for (alloc, ports) in live {
            for p in ports {
                inner.reserved.insert(p, alloc.clone());
            }
        }
        Ok(PortAllocator {
            range,
            host_ip,
            inner: Mutex::new(inner),
        })
    }

    /// Mark `ports` as held by `alloc_id` (an allocation taken up again after an
    /// agent restart), so they are not handed out while it lives.
    pub fn reserve(&self, alloc_id: &str, ports: impl IntoIterator<Item = u16>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for p in ports {
            inner.reserved.insert(p, alloc_id.to_string());
        }
    }

    /// The default allocator: 20000-32000, 127.0.0.1.
    pub fn with_defaults() -> Self {
        match Self::new(DEFAULT_DYNAMIC_RANGE, IpAddr::V4(Ipv4Addr::LOCALHOST)) {
            Ok(a) => a,
            Err(_) => unreachable!("the default range is valid"),
        }
    }

    /// Gives ports to one task of allocation `alloc_id`: all or none. Call
    /// once per task; [`release`](Self::release) frees every port of the
    /// allocation.
    pub fn allocate(&self, alloc_id: &str, ports: &[Port]) -> Result<Vec<AssignedPort>, PortError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken: Vec<u16> = Vec::new();
        let result = self.allocate_locked(&mut inner, alloc_id, ports, &mut taken);
        if result.is_err() {
            for p in taken {
                inner.reserved.remove(&p);
            }
        }
        result
    }

    fn allocate_locked(
        &self,
        inner: &mut Inner,
        alloc_id: &str,
        ports: &[Port],
        taken: &mut Vec<u16>,
    ) -> Result<Vec<AssignedPort>, PortError> {
        let mut out = Vec::with_capacity(ports.len());
        let mut statics = BTreeSet::new();
        // Static ones first, so a dynamic pick never takes a port asked for statically.
        for p in ports {
            if let Some(port) = p.static_port {
                if !statics.insert(port) {
                    return Err(PortError::StaticTwice { port });
                }
                if let Some(holder) = inner.reserved.get(&port) {
                    return Err(PortError::StaticReserved {
                        label: p.label.clone(),
                        port,
                        holder: holder.clone(),
                    });
                }
                if !port_is_free(port) {
                    return Err(PortError::StaticInUse {
                        label: p.label.clone(),
                        port,
                    });
                }
                inner.reserved.insert(port, alloc_id.to_string());
                taken.push(port);
            }
        }
        for p in ports {
            let host_port = match p.static_port {
                Some(port) => port,
                None => {
                    let port = self
                        .pick_dynamic(inner)
                        .ok_or_else(|| PortError::Exhausted {
                            label: p.label.clone(),
                            start: *self.range.start(),
                            end: *self.range.end(),
                        })?;
                    inner.reserved.insert(port, alloc_id.to_string());
                    taken.push(port);
                    port
                }
            };
            out.push(AssignedPort {
                label: p.label.clone(),
                host_ip: self.host_ip,
                host_port,
                to: p.to,
            });
        }
        Ok(out)
    }

    fn pick_dynamic(&self, inner: &mut Inner) -> Option<u16> {
        let (start, end) = (*self.range.start(), *self.range.end());
        let len = u32::from(end - start) + 1;
        let first = if self.range.contains(&inner.next) {
            inner.next
        } else {
            start
        };
        for i in 0..len {
            let offset = (u32::from(first - start) + i) % len;
            let port = u16::try_from(u32::from(start) + offset).ok()?;
            if inner.reserved.contains_key(&port) || !port_is_free(port) {
                continue;
            }
            inner.next = if port == end { start } else { port + 1 };
            return Some(port);
        }
        None
    }

    /// Frees every port of an allocation that ended.
    pub fn release(&self, alloc_id: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.reserved.retain(|_, a| a != alloc_id);
    }

    /// The ports currently held, with their allocation.
    pub fn reserved(&self) -> BTreeMap<u16, String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserved
            .clone()
    }
}

/// True when both TCP and UDP can bind `port` on 0.0.0.0 right now.
pub fn port_is_free(port: u16) -> bool {
    let addr = (Ipv4Addr::UNSPECIFIED, port);
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(label: &str) -> Port {
        Port {
            label: label.into(),
            static_port: None,
            to: None,
        }
    }

    fn lo() -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    #[test]
    fn two_allocations_never_share_a_dynamic_port() {
        let a = PortAllocator::new(41000..=41009, lo()).unwrap();
        let mut seen = BTreeSet::new();
        for i in 0..5 {
            let got = a
                .allocate(&format!("alloc{i}"), &[dynamic("x"), dynamic("y")])
                .unwrap();
            for p in got {
                assert!((41000..=41009).contains(&p.host_port));
                assert!(seen.insert(p.host_port), "port {} given twice", p.host_port);
            }
        }
    }

    #[test]
    fn exhausted_range_is_an_error_and_gives_nothing() {
        let a = PortAllocator::new(41100..=41101, lo()).unwrap();
        a.allocate("a", &[dynamic("x")]).unwrap();
        let err = a.allocate("b", &[dynamic("x"), dynamic("y")]).unwrap_err();
        assert!(matches!(err, PortError::Exhausted { .. }), "{err}");
        assert_eq!(a.reserved().len(), 1, "a failed request keeps nothing");
        a.release("a");
        assert_eq!(
            a.allocate("b", &[dynamic("x"), dynamic("y")])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_port_held_by_another_socket_is_skipped() {
        let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let end = port.saturating_add(20);
        let a = PortAllocator::new(port..=end, lo()).unwrap();
        let got = a.allocate("a", &[dynamic("x")]).unwrap();
        assert_ne!(got[0].host_port, port);
        let err = a
            .allocate(
                "b",
                &[Port {
                    label: "s".into(),
                    static_port: Some(port),
                    to: None,
                }],
            )
            .unwrap_err();
        assert_eq!(
            err,
            PortError::StaticInUse {
                label: "s".into(),
                port
            }
        );
    }

    #[test]
    fn live_ports_survive_an_agent_restart() {
        let a = PortAllocator::with_live(
            41200..=41202,
            lo(),
            [("old".to_string(), vec![41200, 41201])],
        )
        .unwrap();
        let got = a.allocate("new", &[dynamic("x")]).unwrap();
        assert_eq!(got[0].host_port, 41202);
        let err = a
            .allocate(
                "n2",
                &[Port {
                    label: "s".into(),
                    static_port: Some(41200),
                    to: Some(80),
                }],
            )
            .unwrap_err();
        assert!(matches!(err, PortError::StaticReserved { ref holder, .. } if holder == "old"));
    }

    #[test]
    fn static_port_is_kept_with_its_container_port() {
        let free = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let a = PortAllocator::new(41300..=41310, lo()).unwrap();
        let got = a
            .allocate(
                "a",
                &[Port {
                    label: "http".into(),
                    static_port: Some(free),
                    to: Some(80),
                }],
            )
            .unwrap();
        assert_eq!(
            got,
            [AssignedPort {
                label: "http".into(),
                host_ip: lo(),
                host_port: free,
                to: Some(80)
            }]
        );
        assert!(PortAllocator::new(0..=10, lo()).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 10..=9;
        assert!(PortAllocator::new(empty, lo()).is_err());
    }
}
