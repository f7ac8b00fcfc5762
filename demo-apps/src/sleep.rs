//! sleep / curl: client-only pods (`/bin/sleep infinity`); nothing listens.

use tokio::net::TcpListener;

/// Never returns; holds the listener so the port stays reserved but never accepts.
pub(crate) async fn serve(listener: TcpListener) -> std::io::Result<()> {
    let _held = listener;
    std::future::pending::<()>().await;
    Ok(())
}
