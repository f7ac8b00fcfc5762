//! TCP routing at the ingress gateway: Gateway servers with protocol TCP and
//! VirtualService `tcp` routes, with weights chosen per connection as Envoy's
//! tcp_proxy does.

use std::sync::Arc;

use super::route::Target;

/// One compiled `TCPRoute`.
#[derive(Debug, Clone)]
pub struct TcpRoute {
    /// `ns/name` of the VirtualService.
    pub virtual_service: String,
    /// Destinations with weights.
    pub targets: Vec<(u32, Target)>,
    /// Sum of weights.
    pub total: u32,
}

impl TcpRoute {
    /// Picks a destination for one connection.
    pub fn pick(&self) -> Option<&Target> {
        if self.targets.len() == 1 {
            return self.targets.first().map(|(_, t)| t);
        }
        if self.total == 0 {
            return None;
        }
        let mut roll = fastrand::u32(..self.total);
        for (w, t) in &self.targets {
            if roll < *w {
                return Some(t);
            }
            roll -= w;
        }
        None
    }
}

/// A TCP server of the ingress gateway.
#[derive(Debug)]
pub struct TcpServer {
    /// The Gateway server's port (what the gateway listens on).
    pub port: u16,
    /// `ns/name` of the Gateway.
    pub gateway: String,
    /// The first route that matches this port takes the connection.
    pub routes: Vec<Arc<TcpRoute>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_per_connection() {
        let r = TcpRoute {
            virtual_service: "default/tcp-echo".into(),
            targets: vec![(80, Target::Missing("v1".into())), (20, Target::Missing("v2".into()))],
            total: 100,
        };
        let v2 = (0..2000).filter(|_| matches!(r.pick(), Some(Target::Missing(n)) if n == "v2")).count();
        assert!((300..500).contains(&v2), "about 20%: {v2}");
    }
}
