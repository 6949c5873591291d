//! Who a service stream is for and where it may be served, decided from the stream's header
//! alone. Pure: no clock, no randomness, no I/O.

#![deny(clippy::disallowed_methods)]

use super::services::{Local, ServiceSet};
use crate::identity::{Identity, Role};
use crate::protocol::{RejectCode, ServiceRequest, STATUS_SERVICE};

/// A refusal to send back on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reject {
    pub code: RejectCode,
    pub reason: String,
}

/// A [`Reject`] with `code` and `reason`.
pub(crate) fn reject(code: RejectCode, reason: impl Into<String>) -> Reject {
    Reject {
        code,
        reason: reason.into(),
    }
}

/// Where a stream may go.
pub(crate) enum Route {
    /// Only here (the status service, or a stream that has used its hops).
    Here(Local),
    /// Wherever the balancer picks; this node competes if it serves the service.
    Choose(Option<Local>),
}

/// Decides, for a stream `req` opened by `caller` on node `me`, who the request is for (the
/// caller, or the origin a relaying node vouches for) and where it may be served.
pub(crate) fn route(
    me: &Identity,
    services: &ServiceSet,
    hop_limit: u8,
    caller: &Identity,
    req: &ServiceRequest,
) -> Result<(Identity, Route), Reject> {
    // Relaying nodes vouch for their caller; nobody else may claim to speak for another.
    let origin = match (&req.origin, caller.role) {
        (None, _) => caller.clone(),
        (Some(o), Role::Node) => {
            let id: Identity = o
                .parse()
                .map_err(|e| reject(RejectCode::BadHeader, format!("origin: {e}")))?;
            if id.trust_domain != me.trust_domain {
                return Err(reject(
                    RejectCode::Unauthorized,
                    format!("origin {id} is outside this trust domain"),
                ));
            }
            id
        }
        (Some(_), Role::Client) => {
            return Err(reject(
                RejectCode::Unauthorized,
                "only nodes may relay on behalf of another caller",
            ))
        }
    };
    if req.hops > 0 && caller.role != Role::Node {
        return Err(reject(RejectCode::Unauthorized, "only nodes may relay (hops > 0)"));
    }
    if req.service == STATUS_SERVICE {
        return Ok((origin, Route::Here(Local::Status)));
    }
    let local = services.local.get(&req.service).cloned();
    // A node that serves the service serves a relayed stream itself: it was relayed here
    // because it serves it (or the node before could not reach a server, and this one is one).
    if req.hops >= hop_limit || (req.hops > 0 && local.is_some()) {
        if let Some(l) = local {
            return Ok((origin, Route::Here(l)));
        }
        return Err(reject(
            RejectCode::HopLimit,
            format!(
                "service {:?} is not served on node {} and the stream has taken {} hop(s) (limits.hop_limit = {})",
                req.service, me.name, req.hops, hop_limit
            ),
        ));
    }
    Ok((origin, Route::Choose(local)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(role: Role, name: &str) -> Identity {
        Identity::new("mesh.test", role, name).expect("valid identity")
    }

    fn req(service: &str, hops: u8, origin: Option<&Identity>) -> ServiceRequest {
        ServiceRequest {
            service: service.into(),
            key: None,
            hops,
            deadline_ms: None,
            origin: origin.map(Identity::uri),
        }
    }

    fn services() -> ServiceSet {
        let mut s = ServiceSet::default();
        s.local.insert("db".into(), Local::Tcp("127.0.0.1:5432".into()));
        s
    }

    fn code(r: Result<(Identity, Route), Reject>) -> Option<RejectCode> {
        r.err().map(|r| r.code)
    }

    #[test]
    fn a_client_is_its_own_origin_and_may_not_claim_another() {
        let (me, web) = (id(Role::Node, "a"), id(Role::Client, "web"));
        let (origin, route) = route(&me, &services(), 1, &web, &req("db", 0, None)).expect("routed");
        assert_eq!(origin, web);
        assert!(matches!(route, Route::Choose(Some(Local::Tcp(_)))));
        let other = id(Role::Client, "admin");
        let claimed = route_of(&me, &web, &req("db", 0, Some(&other)));
        assert_eq!(code(claimed), Some(RejectCode::Unauthorized));
        assert_eq!(
            code(route_of(&me, &web, &req("db", 1, None))),
            Some(RejectCode::Unauthorized),
            "hops > 0"
        );
    }

    fn route_of(me: &Identity, caller: &Identity, r: &ServiceRequest) -> Result<(Identity, Route), Reject> {
        route(me, &services(), 1, caller, r)
    }

    #[test]
    fn a_node_vouches_for_origins_of_its_own_trust_domain_only() {
        let (me, b, web) = (id(Role::Node, "a"), id(Role::Node, "b"), id(Role::Client, "web"));
        let (origin, _) = route_of(&me, &b, &req("db", 1, Some(&web))).expect("routed");
        assert_eq!(origin, web);
        let foreign = Identity::new("other.test", Role::Client, "web").expect("valid identity");
        assert_eq!(
            code(route_of(&me, &b, &req("db", 1, Some(&foreign)))),
            Some(RejectCode::Unauthorized)
        );
        let mut garbage = req("db", 1, None);
        garbage.origin = Some("not a spiffe id".into());
        assert_eq!(code(route_of(&me, &b, &garbage)), Some(RejectCode::BadHeader));
    }

    #[test]
    fn at_the_hop_limit_a_stream_is_served_here_or_refused() {
        let (me, b) = (id(Role::Node, "a"), id(Role::Node, "b"));
        assert!(matches!(
            route_of(&me, &b, &req("db", 1, None)),
            Ok((_, Route::Here(Local::Tcp(_))))
        ));
        let far = route_of(&me, &b, &req("cache", 1, None));
        let r = far.err().expect("refused");
        assert_eq!(r.code, RejectCode::HopLimit);
        assert!(r.reason.contains("limits.hop_limit = 1"), "{}", r.reason);
        assert!(matches!(
            route_of(&me, &b, &req("cache", 0, None)),
            Ok((_, Route::Choose(None)))
        ));
    }

    #[test]
    fn under_a_hop_limit_of_2_a_relayed_stream_is_served_by_a_server_and_routed_on_by_others() {
        let (me, b) = (id(Role::Node, "a"), id(Role::Node, "b"));
        let at = |hops| route(&me, &services(), 2, &b, &req("db", hops, None));
        assert!(matches!(at(1), Ok((_, Route::Here(Local::Tcp(_))))), "a server: here");
        assert!(
            matches!(at(0), Ok((_, Route::Choose(Some(_))))),
            "the entry node balances"
        );
        let far = |hops| route(&me, &services(), 2, &b, &req("cache", hops, None));
        assert!(
            matches!(far(1), Ok((_, Route::Choose(None)))),
            "not a server: routed on"
        );
        let r = far(2).err().expect("refused");
        assert_eq!(r.code, RejectCode::HopLimit);
        assert!(r.reason.contains("limits.hop_limit = 2"), "{}", r.reason);
    }

    #[test]
    fn the_status_service_is_always_answered_here() {
        let (me, web) = (id(Role::Node, "a"), id(Role::Client, "web"));
        assert!(matches!(
            route_of(&me, &web, &req(STATUS_SERVICE, 0, None)),
            Ok((_, Route::Here(Local::Status)))
        ));
    }
}
