//! One certificate order over RFC 8555 with `instant-acme`: the account
//! (created once and kept), the order, an HTTP-01 challenge per name
//! answered by our responder through Envoy, then finalize and download.

use std::path::Path;
use std::time::Duration;

use instant_acme::{
    Account, AccountBuilder, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use super::Tokens;
use super::store::Store;

/// Why an order did not give a certificate.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong, for events, logs and status.
    pub message: String,
    /// Whether the server had accepted an order: it then counts against
    /// the server's limits, and the next try waits longer.
    pub order_placed: bool,
    /// The server does not know our account (it was deactivated, or the
    /// server lost its state): register again rather than retry with it.
    pub account_gone: bool,
}

impl Failure {
    fn before_order(what: &str, e: impl std::fmt::Display) -> Failure {
        Failure::unplaced(format!("{what}: {e}"))
    }

    fn in_order(what: &str, e: impl std::fmt::Display) -> Failure {
        Failure::placed(format!("{what}: {e}"))
    }

    /// A failure before any order reached the server.
    pub fn unplaced(message: String) -> Failure {
        Failure {
            message,
            order_placed: false,
            account_gone: false,
        }
    }

    /// A failure that came after the order was placed, or a timeout.
    pub fn placed(message: String) -> Failure {
        Failure {
            message,
            order_placed: true,
            account_gone: false,
        }
    }

    fn new_order(e: instant_acme::Error) -> Failure {
        let gone = matches!(&e, instant_acme::Error::Api(p)
            if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"));
        Failure {
            account_gone: gone,
            ..Failure::before_order("new order", e)
        }
    }
}

/// How long the server may take to validate the challenges, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// An HTTP client for the directory: the system's roots, or only the
/// operator's CA file (a private or test ACME server); every request is
/// bounded in time ([`super::http`]).
fn builder(ca_file: Option<&Path>) -> Result<AccountBuilder, Failure> {
    let client = super::http::Bounded::new(ca_file).map_err(Failure::unplaced)?;
    Ok(Account::builder_with_http(Box::new(client)))
}

/// The operator's account at `directory_url`: the stored one, or a new
/// one (with `contact`, the operator's address), stored at once so a
/// restart does not make another. One per directory, whatever the
/// documents say: accounts are the operator's, and a CA limits how many
/// one address may register.
pub async fn account(
    store: &Store,
    directory_url: &str,
    contact: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Account, Failure> {
    let saved = store
        .account(directory_url, None)
        .map_err(|e| Failure::before_order("read the account", e))?;
    if let Some(json) = saved {
        let creds: AccountCredentials = serde_json::from_str(&json)
            .map_err(|e| Failure::before_order("the stored account", e))?;
        return builder(ca_file)?
            .from_credentials(creds)
            .await
            .map_err(|e| Failure::before_order(&format!("directory {directory_url}"), e));
    }
    let contact = contact.map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder(ca_file)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            directory_url.to_owned(),
            None,
        )
        .await
        .map_err(|e| Failure::before_order(&format!("register at {directory_url}"), e))?;
    let json = serde_json::to_string(&creds).map_err(|e| Failure::before_order("account", e))?;
    store
        .save_account(directory_url, None, &json)
        .map_err(|e| Failure::before_order("save the account", e))?;
    Ok(account)
}

/// Orders a certificate for `acme.domains` of load balancer `lb`: the key
/// (PEM) and the chain (PEM).
pub async fn obtain(
    account: &Account,
    lb: &str,
    acme: &vpsie_lb_model::Acme,
    tokens: &Tokens,
) -> Result<(String, String), Failure> {
    let ids: Vec<Identifier> = acme.domains.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(Failure::new_order)?;
    // Removes our answers however this ends, a timeout's drop included:
    // an abandoned order's tokens must not stay answerable.
    let mut mine = Answers {
        tokens: tokens.clone(),
        keys: Vec::new(),
    };
    answer_challenges(&mut order, lb, tokens, &mut mine.keys).await?;
    let issued = finish(&mut order).await?;
    forget_authorizations(&mut order).await;
    Ok(issued)
}

/// The challenge answers one order put up, taken down when it ends.
struct Answers {
    tokens: Tokens,
    keys: Vec<(String, String)>,
}

impl Drop for Answers {
    fn drop(&mut self) {
        if let Ok(mut t) = self.tokens.lock() {
            for key in &self.keys {
                t.remove(key);
            }
        }
    }
}

/// Deactivates every authorization of a finished order. The CA would
/// otherwise keep them valid for the operator's account (Let's Encrypt: up
/// to 30 days), and every load balancer orders with that account: a later
/// order for the same name, by anyone, would be issued without a challenge.
async fn forget_authorizations(order: &mut instant_acme::Order) {
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let result = match next {
            Ok(mut authz) if authz.status == AuthorizationStatus::Valid => {
                authz.deactivate().await.map(|_| ())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(phase = "acme", error = %e, "could not deactivate an authorization");
        }
    }
}

/// Puts each pending authorization's HTTP-01 answer where the responder
/// finds it (for `lb`'s listener and the authorization's name only) and
/// tells the server to check; `mine` collects the keys.
async fn answer_challenges(
    order: &mut instant_acme::Order,
    lb: &str,
    tokens: &Tokens,
    mine: &mut Vec<(String, String)>,
) -> Result<(), Failure> {
    let mut authorizations = order.authorizations();
    while let Some(next) = authorizations.next().await {
        let mut authz = next.map_err(|e| Failure::in_order("authorization", e))?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => {
                // Valid before we proved anything: left over from an order
                // whose authorizations were not deactivated (a crash). The
                // operator's account is everyone's, so this load balancer
                // must prove the name itself: deactivate, and order again.
                let name = authz.identifier().to_string();
                let gone = authz.deactivate().await;
                let what = format!("{name}: a valid authorization was left from an earlier order");
                return Err(match gone {
                    Ok(_) => Failure::unplaced(format!("{what}; deactivated, ordering again")),
                    Err(e) => Failure::in_order(&what, e),
                });
            }
            other => {
                return Err(Failure::in_order("authorization", format!("{other:?}")));
            }
        }
        let name = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .ok_or_else(|| Failure::in_order(&name, "the server offers no http-01 challenge"))?;
        let answer = super::responder::Challenge {
            key_authorization: challenge.key_authorization().as_str().to_owned(),
            domain: name.to_ascii_lowercase(),
        };
        let key = (lb.to_owned(), challenge.token.clone());
        if let Ok(mut t) = tokens.lock() {
            t.insert(key.clone(), answer);
        }
        mine.push(key);
        challenge
            .set_ready()
            .await
            .map_err(|e| Failure::in_order(&name, e))?;
    }
    Ok(())
}

/// Waits for validation, finalizes with a new key and downloads the chain.
async fn finish(order: &mut instant_acme::Order) -> Result<(String, String), Failure> {
    let retries = RetryPolicy::new().timeout(VALIDATION_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| Failure::in_order("validation", e))?;
    if status != OrderStatus::Ready {
        return Err(Failure::in_order(
            "validation",
            format!("the order is {status:?}; see the server's problem for each name"),
        ));
    }
    let key = order
        .finalize()
        .await
        .map_err(|e| Failure::in_order("finalize", e))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| Failure::in_order("download", e))?;
    Ok((key, chain))
}
