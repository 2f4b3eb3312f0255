//! Password hashing with argon2 (the PHC string format, parameters stored with each hash).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};

/// The password-hashing stage: at most `running` hashes at once (each takes 19 MiB and tens of
/// milliseconds of a core), at most `waiting` more queued for up to `max_wait`; past that the
/// caller is told to come back later instead of piling up memory and CPU.
#[derive(Debug)]
pub struct Hashing {
    running: tokio::sync::Semaphore,
    waiting: tokio::sync::Semaphore,
    max_wait: std::time::Duration,
    /// A hash of a random password, verified against when the username is unknown, so that a
    /// failed login costs the same whether or not the account exists.
    decoy: String,
}

/// The hashing stage is full: answer 503 with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

impl Hashing {
    /// A stage running `running` hashes at once with `waiting` more queued for `max_wait`.
    ///
    /// # Errors
    /// When the decoy hash cannot be made (the OS RNG failed).
    pub fn new(
        running: usize,
        waiting: usize,
        max_wait: std::time::Duration,
    ) -> Result<Self, argon2::password_hash::Error> {
        let secret: [u8; 16] = rand::random();
        let decoy = hash_password(&format!("{secret:02x?}"))?;
        Ok(Hashing {
            running: tokio::sync::Semaphore::new(running.max(1)),
            waiting: tokio::sync::Semaphore::new(waiting),
            max_wait,
            decoy,
        })
    }

    /// Runs `work` on the blocking pool once the stage has room.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let _queued = self.waiting.try_acquire().map_err(|_| Busy)?;
        let _running = tokio::time::timeout(self.max_wait, self.running.acquire())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        tokio::task::spawn_blocking(work).await.map_err(|_| Busy)
    }

    /// Hashes `password` (see [`hash_password`]); `Ok(None)` when hashing itself failed.
    ///
    /// # Errors
    /// [`Busy`] when the stage is full.
    pub async fn hash(&self, password: String) -> Result<Option<String>, Busy> {
        self.run(move || hash_password(&password).ok()).await
    }

    /// Checks `password` against `stored`, or against the decoy when there is no account, so
    /// that both cost one verification.
    ///
    /// # Errors
    /// [`Busy`] when the stage is full.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, Busy> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.decoy.clone());
        let ok = self
            .run(move || verify_password(&password, &stored))
            .await?;
        Ok(ok && known)
    }
}

/// Hashes a password; the salt comes from the OS CSPRNG.
///
/// # Errors
/// When the OS RNG fails or the password is over argon2's length limit.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// Checks a password against a stored PHC string; `false` for a wrong password or a corrupt hash.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_stage_is_bounded_and_unknown_users_cost_a_verification() {
        let stage =
            std::sync::Arc::new(Hashing::new(1, 1, std::time::Duration::from_millis(50)).unwrap());
        // An unknown user is refused after a real verification against the decoy.
        let started = std::time::Instant::now();
        assert_eq!(stage.verify("whatever1".into(), None).await, Ok(false));
        let unknown = started.elapsed();
        let stored = hash_password("whatever1").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            stage.verify("whatever1".into(), Some(stored)).await,
            Ok(true)
        );
        let known = started.elapsed();
        assert!(
            unknown * 4 > known && known * 4 > unknown,
            "{unknown:?} vs {known:?}"
        );
        // One running, one waiting: a third caller is turned away at once, and the waiting one
        // gives up after max_wait.
        let (a, b, c) = tokio::join!(
            stage.hash("first one".into()),
            stage.hash("second one".into()),
            stage.hash("third one".into()),
        );
        let busy = [&a, &b, &c].iter().filter(|r| r.is_err()).count();
        assert!(a.is_ok(), "the first runs");
        assert!(busy >= 1, "{a:?} {b:?} {c:?}");
    }

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("battery staple", &a));
        assert!(!verify_password("correct horse", "not a phc string"));
    }
}
