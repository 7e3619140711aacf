//! The words status speaks: condition types, the School's Ready and BackupHealthy
//! reasons, the reasons and phases of SchoolBackup and SchoolRestore, and the phases of
//! School, each written once. Status fields stay strings
//! on the wire (the CRD schema does not change); [`as_str`](ConditionType::as_str) and
//! `Display` give exactly these strings.

macro_rules! wire_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The string written to status.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.as_str().to_string()
            }
        }
    };
}

wire_words! {
    /// Condition types of a School's status.
    ConditionType {
        Ready => "Ready",
        BackupHealthy => "BackupHealthy",
        Paused => "Paused",
    }
}

wire_words! {
    /// `status.phase` of a School (display only; conditions carry the detail).
    SchoolPhase {
        Pending => "Pending",
        Ready => "Ready",
        Inactive => "Inactive",
        Restoring => "Restoring",
        Failed => "Failed",
        Paused => "Paused",
        Deleting => "Deleting",
    }
}

wire_words! {
    /// Reasons of a School's `Ready` (and `Paused`) condition.
    ReadyReason {
        Provisioned => "Provisioned",
        Inactive => "Inactive",
        Restoring => "Restoring",
        PausedByAnnotation => "PausedByAnnotation",
        InvalidSpec => "InvalidSpec",
        UnknownTargetServer => "UnknownTargetServer",
        Conflict => "Conflict",
        DatabaseMissing => "DatabaseMissing",
        FinalBackupFailed => "FinalBackupFailed",
        FinalBackupRunning => "FinalBackupRunning",
        BackupBeforeMigration => "BackupBeforeMigration",
        BackupBeforeMigrationFailed => "BackupBeforeMigrationFailed",
        DeletionBlocked => "DeletionBlocked",
        AdminCredentialsUnavailable => "AdminCredentialsUnavailable",
        DatabaseServerError => "DatabaseServerError",
        MigrationFailed => "MigrationFailed",
        KubernetesApiError => "KubernetesApiError",
        InternalError => "InternalError",
    }
}

wire_words! {
    /// Reasons of a School's `BackupHealthy` condition.
    BackupHealthReason {
        NoBackupStorage => "NoBackupStorage",
        BackupFailed => "BackupFailed",
        Suspended => "Suspended",
        BackupSucceeded => "BackupSucceeded",
        NoBackupYet => "NoBackupYet",
        CronJobConflict => "CronJobConflict",
    }
}

wire_words! {
    /// `status.reason` of a SchoolBackup or SchoolRestore (its failures carry the
    /// runner's or the reconcile's own reason), the reasons of the events about them, and
    /// the reason of a backup Job that failed without saying why.
    OperationReason {
        JobStarted => "JobStarted",
        JobRunning => "JobRunning",
        JobFailed => "JobFailed",
        SchoolNotReady => "SchoolNotReady",
        WaitingForRestore => "WaitingForRestore",
        BackupSucceeded => "BackupSucceeded",
        BackupFailed => "BackupFailed",
        Restored => "Restored",
        RestoreSucceeded => "RestoreSucceeded",
        RestoreFailed => "RestoreFailed",
    }
}

wire_words! {
    /// `status.phase` of a SchoolBackup or SchoolRestore.
    OperationPhase {
        Pending => "Pending",
        Running => "Running",
        BlockingLogins => "BlockingLogins",
        Restoring => "Restoring",
        Succeeded => "Succeeded",
        Failed => "Failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are an API: dashboards, `kubectl wait --for=condition=Ready` and
    /// the data plane's users read them. Changing one must fail here.
    #[test]
    fn the_wire_strings_are_the_variant_names() {
        fn check<T: std::fmt::Debug + std::fmt::Display + Copy>(
            all: &[T],
            text: fn(T) -> &'static str,
        ) {
            for v in all {
                assert_eq!(format!("{v:?}"), text(*v));
                assert_eq!(v.to_string(), text(*v));
            }
        }
        check(ConditionType::ALL, ConditionType::as_str);
        check(SchoolPhase::ALL, SchoolPhase::as_str);
        check(ReadyReason::ALL, ReadyReason::as_str);
        check(OperationPhase::ALL, OperationPhase::as_str);
        check(BackupHealthReason::ALL, BackupHealthReason::as_str);
        check(OperationReason::ALL, OperationReason::as_str);
        assert_eq!(
            String::from(ReadyReason::KubernetesApiError),
            "KubernetesApiError"
        );
        assert_eq!(SchoolPhase::ALL.len(), 7);
        assert_eq!(ReadyReason::ALL.len(), 18);
    }
}
