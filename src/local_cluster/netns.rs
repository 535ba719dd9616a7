//! Network namespaces for a chaos run that cuts nodes off (`--network netns`): each node runs in its own namespace
//! with its own address on a bridge, as on separate machines, so one node can be partitioned from the others while
//! the runner (on the bridge, outside every namespace) still reaches all of them.
//!
//! Needs root and iproute2 and iptables. Everything is named after the run (`btb<tag>` bridge, `baton-<tag>-n<id>`
//! namespaces, `btv<tag>n<id>` veth ends) and removed on drop; a run killed with SIGKILL leaves them behind
//! (`ip netns list`, `ip link show type bridge`).

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context};

/// The namespaces, bridge and firewall rule of one run.
#[derive(Debug)]
pub struct Namespaces {
    tag: String,
    /// The /24 the nodes live in: node `id` is `.id`, the runner (the bridge) `.254`.
    subnet: [u8; 3],
    ids: Vec<u64>,
    /// Whether the host FORWARD rule letting bridge traffic through was added (and must be removed).
    forward_rule: bool,
}

/// Runs a command; fails with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program} (installed?)"))?;
    if !out.status.success() {
        bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Namespaces {
    /// Whether this process can make namespaces: root, with `ip` and `iptables` on the PATH. `Err` says why not.
    pub fn available() -> Result<(), String> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err("network namespaces need root".into());
        }
        for tool in ["ip", "iptables"] {
            let found = Command::new(tool).arg("-V").output().is_ok_and(|o| o.status.success());
            if !found {
                return Err(format!("network namespaces need `{tool}` (iproute2, iptables)"));
            }
        }
        Ok(())
    }

    /// Creates a namespace per node id on a fresh bridge.
    pub fn create(ids: &[u64]) -> anyhow::Result<Namespaces> {
        Namespaces::available().map_err(anyhow::Error::msg)?;
        let random = uuid::Uuid::new_v4().as_u128();
        let tag = format!("{:04x}", random & 0xffff);
        let subnet = [10, 200 + ((random >> 16) % 50) as u8, ((random >> 24) % 250) as u8];
        let mut ns = Namespaces { tag, subnet, ids: ids.to_vec(), forward_rule: false };
        ns.build().context("setting up network namespaces for the nodes")?;
        Ok(ns)
    }

    fn bridge(&self) -> String {
        format!("btb{}", self.tag)
    }

    /// The namespace node `id` runs in.
    pub fn namespace(&self, id: u64) -> String {
        format!("baton-{}-n{id}", self.tag)
    }

    /// Node `id`'s address.
    pub fn node_ip(&self, id: u64) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, u8::try_from(id).unwrap_or(u8::MAX))
    }

    fn build(&mut self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        let [a, b, c] = self.subnet;
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &format!("{a}.{b}.{c}.254/24"), "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // Where br_netfilter is loaded (Docker loads it and sets FORWARD's policy to DROP), traffic between two
        // ports of a bridge goes through the host's FORWARD chain.
        run("iptables", &["-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"])?;
        self.forward_rule = true;
        for &id in &self.ids.clone() {
            let ns = self.namespace(id);
            let host_end = format!("btv{}n{id}", self.tag);
            run("ip", &["netns", "add", &ns])?;
            run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            run("ip", &["link", "set", &host_end, "master", &bridge, "up"])?;
            let addr = format!("{}/24", self.node_ip(id));
            run("ip", &["netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            run("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Drops all traffic between node `id` and the other nodes (both ways); the runner still reaches it.
    pub fn cut_off(&self, id: u64) -> anyhow::Result<()> {
        let ns = self.namespace(id);
        for other in self.ids.iter().filter(|o| **o != id) {
            let ip = self.node_ip(*other).to_string();
            run("ip", &["netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"])?;
            run("ip", &["netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Undoes [`Namespaces::cut_off`].
    pub fn heal(&self, id: u64) -> anyhow::Result<()> {
        let ns = self.namespace(id);
        run("ip", &["netns", "exec", &ns, "iptables", "-F", "INPUT"])?;
        run("ip", &["netns", "exec", &ns, "iptables", "-F", "OUTPUT"])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for &id in &self.ids {
            // Deleting the namespace deletes its veth end, and with it the host end.
            let _ = run("ip", &["netns", "del", &self.namespace(id)]);
        }
        let bridge = self.bridge();
        if self.forward_rule {
            let _ = run("iptables", &["-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]);
        }
        let _ = run("ip", &["link", "del", &bridge]);
    }
}
