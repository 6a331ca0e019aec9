//! The kernel's TCP socket tables, `/proc/net/tcp` and `/proc/net/tcp6`:
//! a header line, then one socket per line as
//! `sl local_address rem_address st ...`, addresses as `HEX_IP:HEX_PORT`
//! and the state in hex (`01` established, `0A` listen).

use lifehook_sdk::Failure;

const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// One socket: its local port and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Socket {
    port: u16,
    state: u8,
}

/// Both tables, read once.
pub struct Table {
    sockets: Vec<Socket>,
}

impl Table {
    /// Reads `dir/tcp` and `dir/tcp6` (either may be missing: a kernel
    /// without IPv6; not both).
    pub fn read(dir: &str) -> Result<Table, Failure> {
        let mut sockets = Vec::new();
        let mut found = false;
        for name in ["tcp", "tcp6"] {
            let path = format!("{}/{name}", dir.trim_end_matches('/'));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    found = true;
                    sockets.extend(parse(&text));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Failure::fatal(format!(
                        "cannot read {path}: {e}; grant it with allow.dirs = [{{ host = \"/proc/net\", guest = \"{dir}\" }}]"
                    )));
                }
            }
        }
        if !found {
            return Err(Failure::fatal(format!(
                "neither {dir}/tcp nor {dir}/tcp6 is readable: grant them with allow.dirs = [{{ host = \"/proc/net\", guest = \"{dir}\" }}]"
            )));
        }
        Ok(Table { sockets })
    }

    /// Established connections whose local port is one of `ports`: the
    /// application's side of its clients' connections.
    pub fn established(&self, ports: &[u16]) -> usize {
        self.sockets
            .iter()
            .filter(|s| s.state == ESTABLISHED && ports.contains(&s.port))
            .count()
    }

    /// The ports in LISTEN state, sorted, each once.
    pub fn listening(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .sockets
            .iter()
            .filter(|s| s.state == LISTEN)
            .map(|s| s.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// The sockets of one table; lines that do not parse are passed over.
fn parse(text: &str) -> impl Iterator<Item = Socket> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let _slot = fields.next()?;
        let local = fields.next()?;
        let _remote = fields.next()?;
        let state = u8::from_str_radix(fields.next()?, 16).ok()?;
        let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
        Some(Socket { port, state })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2C4 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2C4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2C6 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
   4: 0100007F:0050 0100007F:D2C8 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 20 4 30 10 -1
garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:20FB 00000000000000000000000001000000:E1A2 01 00000000:00000000
";

    fn table() -> Table {
        Table {
            sockets: parse(TCP).chain(parse(TCP6)).collect(),
        }
    }

    #[test]
    fn established_counts_only_the_servers_side_on_the_given_ports() {
        let t = table();
        // :8080 has one established client; the client's own end (local
        // port 53956) and the TIME_WAIT one are not counted.
        assert_eq!(t.established(&[8080]), 1);
        assert_eq!(t.established(&[80]), 1);
        assert_eq!(t.established(&[8443]), 1, "IPv6");
        assert_eq!(t.established(&[8080, 8443, 80]), 3);
        assert_eq!(t.established(&[9999]), 0);
    }

    #[test]
    fn listening_ports_are_found_in_both_tables() {
        assert_eq!(table().listening(), vec![8080, 8443]);
    }
}
