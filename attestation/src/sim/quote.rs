//! Assembly of simulated TDX quotes, version 4 (and version 5 with a TDX 1.0 body).
//!
//! Layout per the Intel TDX DCAP Quoting Library API, "Quote Format" (v4):
//!
//! ```text
//! header (48)       version=4, attestation key type=2 (ECDSA P-256), tee type=0x81 (TDX),
//!                   reserved (4, zero as in real TDX quotes), QE vendor id (Intel's),
//!                   user data (QE id 16 || 4 zero bytes)
//! TD report (584)   TEE_TCB_SVN, MRSEAM, MRSIGNER_SEAM, SEAM attributes, TD attributes, XFAM,
//!                   MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0..3, report data
//! sig data len (4)
//! signature data    ECDSA signature (64, raw r||s over header || TD report)
//!                   attestation public key (64, raw x||y)
//!                   certification data: type 6 (u16), size (u32), then
//!                     QE report (384, SGX REPORT body), QE report signature (64, by the PCK key),
//!                     QE auth data size (u16) + data (32),
//!                     certification data: type 5 (u16), size (u32), PEM PCK chain + NUL
//! ```
//!
//! The QE report's report data is SHA-256(attestation public key || QE auth data) padded with
//! 32 zero bytes, binding the attestation key to the PCK certificate.
//!
//! Trust boundary: these quotes are simulated evidence. Anyone with the platform seed can make
//! one for any registers; only a policy that names the simulated root accepts them.

use measurements::TdRegisters;
use sha2::{Digest, Sha256};

use super::{SimError, SimPlatform};

/// Fixed values of the simulated TDX module and quoting enclave.
pub(crate) mod consts {
    /// MRSIGNER_SEAM: Intel-signed TDX modules report zero here.
    pub(crate) const MRSIGNER_SEAM: [u8; 48] = [0; 48];
    /// SEAM attributes of a production TDX module.
    pub(crate) const SEAM_ATTRIBUTES: [u8; 8] = [0; 8];
    /// ISVPRODID of the simulated TD quoting enclave (Intel's TD_QE uses 2 as well).
    pub(crate) const QE_ISVPRODID: u16 = 2;
    /// MISCSELECT of the simulated QE.
    pub(crate) const QE_MISCSELECT: u32 = 0;
    /// ATTRIBUTES of the simulated QE report: INIT | MODE64BIT | PROVISIONKEY, XFRM 0xe7.
    pub(crate) const QE_REPORT_ATTRIBUTES: [u8; 16] =
        [0x15, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0];
    /// ATTRIBUTES and mask the QE identity requires (as in Intel's TD_QE identity).
    pub(crate) const QE_IDENTITY_ATTRIBUTES: [u8; 16] =
        [0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    pub(crate) const QE_IDENTITY_ATTRIBUTES_MASK: [u8; 16] = [
        0xfb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    /// QE authentication data carried in (and hashed into) every quote.
    pub(crate) const QE_AUTH_DATA: [u8; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
        25, 26, 27, 28, 29, 30, 31,
    ];
}

use consts::*;

/// Quote format version produced.
const QUOTE_VERSION: u16 = 4;
/// Attestation key type ECDSA-256 with P-256.
const ATT_KEY_TYPE_ECDSA_P256: u16 = 2;
/// TEE type of TDX.
const TEE_TYPE_TDX: u32 = 0x81;
/// Certification data type: PEM PCK certificate chain.
const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data.
const CERT_TYPE_QE_REPORT: u16 = 6;
/// Length of the header plus a TDX 1.0 TD report body: the signed part of a v4 quote.
const SIGNED_LEN: usize = 48 + 584;

impl SimPlatform {
    /// A TDX quote v4 over `registers` and `report_data`, signed by this platform's
    /// attestation key. TEE_TCB_SVN and MRSEAM come from the platform parameters. Any TD
    /// attributes are accepted (including DEBUG, which verifiers reject by default).
    pub fn quote(
        &self,
        registers: &TdRegisters,
        report_data: &[u8; 64],
    ) -> Result<Vec<u8>, SimError> {
        self.quote_version(QUOTE_VERSION, registers, report_data)
    }

    /// The same quote in format version 5: the header is followed by a body descriptor
    /// (type 2 = TDX 1.0 TD report, size 584), which the signature also covers.
    pub fn quote_v5(
        &self,
        registers: &TdRegisters,
        report_data: &[u8; 64],
    ) -> Result<Vec<u8>, SimError> {
        self.quote_version(5, registers, report_data)
    }

    fn quote_version(
        &self,
        version: u16,
        registers: &TdRegisters,
        report_data: &[u8; 64],
    ) -> Result<Vec<u8>, SimError> {
        let mut quote = Vec::with_capacity(SIGNED_LEN + 10 + 64 + self.signature_tail.len());
        // Header.
        quote.extend_from_slice(&version.to_le_bytes());
        quote.extend_from_slice(&ATT_KEY_TYPE_ECDSA_P256.to_le_bytes());
        quote.extend_from_slice(&TEE_TYPE_TDX.to_le_bytes());
        quote.extend_from_slice(&[0u8; 4]);
        quote.extend_from_slice(&dcap_qvl::INTEL_QE_VENDOR_ID);
        quote.extend_from_slice(&self.qe_id);
        quote.extend_from_slice(&[0u8; 4]);
        if version == 5 {
            quote.extend_from_slice(&2u16.to_le_bytes());
            quote.extend_from_slice(&584u32.to_le_bytes());
        }
        // TD report body (TDX 1.0 layout).
        quote.extend_from_slice(&self.params.tee_tcb_svn);
        quote.extend_from_slice(&self.params.mrseam);
        quote.extend_from_slice(&MRSIGNER_SEAM);
        quote.extend_from_slice(&SEAM_ATTRIBUTES);
        quote.extend_from_slice(&registers.td_attributes);
        quote.extend_from_slice(&registers.xfam);
        quote.extend_from_slice(&registers.mrtd);
        quote.extend_from_slice(&registers.mrconfigid);
        quote.extend_from_slice(&registers.mrowner);
        quote.extend_from_slice(&registers.mrownerconfig);
        for rtmr in &registers.rtmr {
            quote.extend_from_slice(rtmr);
        }
        quote.extend_from_slice(report_data);

        let signature = self.attestation_key.sign_raw(&quote, "quote")?;
        let sig_data_len = u32_len(64 + self.signature_tail.len(), "quote signature data")?;
        quote.extend_from_slice(&sig_data_len.to_le_bytes());
        quote.extend_from_slice(&signature);
        quote.extend_from_slice(&self.signature_tail);
        Ok(quote)
    }

    /// The quote signature data after the signature, identical for every quote of a platform:
    /// attestation public key and QE report certification data (type 6).
    pub(super) fn build_signature_tail(&self) -> Result<Vec<u8>, SimError> {
        let attestation_key = self.attestation_key.public_raw();
        let qe_report = self.qe_report(&attestation_key);
        let qe_report_signature = self.pki.pck_key.sign_raw(&qe_report, "qe report")?;

        // Inner certification data: the PEM chain with a trailing NUL, as Intel's QE emits it.
        let mut chain = self.pki.pck_chain_pem().into_bytes();
        chain.push(0);

        let mut qe_cert_data = Vec::with_capacity(384 + 64 + 2 + 32 + 6 + chain.len());
        qe_cert_data.extend_from_slice(&qe_report);
        qe_cert_data.extend_from_slice(&qe_report_signature);
        qe_cert_data.extend_from_slice(&(QE_AUTH_DATA.len() as u16).to_le_bytes());
        qe_cert_data.extend_from_slice(&QE_AUTH_DATA);
        qe_cert_data.extend_from_slice(&CERT_TYPE_PCK_CHAIN.to_le_bytes());
        qe_cert_data.extend_from_slice(&u32_len(chain.len(), "pck chain")?.to_le_bytes());
        qe_cert_data.extend_from_slice(&chain);

        let mut tail = Vec::with_capacity(64 + 6 + qe_cert_data.len());
        tail.extend_from_slice(&attestation_key);
        tail.extend_from_slice(&CERT_TYPE_QE_REPORT.to_le_bytes());
        tail.extend_from_slice(
            &u32_len(qe_cert_data.len(), "qe certification data")?.to_le_bytes(),
        );
        tail.extend_from_slice(&qe_cert_data);
        Ok(tail)
    }

    /// The simulated QE's SGX report (384 bytes) certifying `attestation_key`.
    fn qe_report(&self, attestation_key: &[u8; 64]) -> [u8; 384] {
        let mut hasher = Sha256::new();
        hasher.update(attestation_key);
        hasher.update(QE_AUTH_DATA);
        let binding: [u8; 32] = hasher.finalize().into();

        let mut report = Vec::with_capacity(384);
        report.extend_from_slice(&self.params.cpu_svn); // CPUSVN
        report.extend_from_slice(&QE_MISCSELECT.to_le_bytes()); // MISCSELECT
        report.extend_from_slice(&[0u8; 28]); // reserved
        report.extend_from_slice(&QE_REPORT_ATTRIBUTES); // ATTRIBUTES
        report.extend_from_slice(&self.qe.mrenclave); // MRENCLAVE
        report.extend_from_slice(&[0u8; 32]); // reserved
        report.extend_from_slice(&self.qe.mrsigner); // MRSIGNER
        report.extend_from_slice(&[0u8; 96]); // reserved
        report.extend_from_slice(&QE_ISVPRODID.to_le_bytes()); // ISVPRODID
        report.extend_from_slice(&self.params.qe_isv_svn.to_le_bytes()); // ISVSVN
        report.extend_from_slice(&[0u8; 60]); // reserved
        report.extend_from_slice(&binding); // REPORTDATA[0..32]
        report.extend_from_slice(&[0u8; 32]); // REPORTDATA[32..64]

        let mut out = [0u8; 384];
        for (o, b) in out.iter_mut().zip(report.iter()) {
            *o = *b;
        }
        out
    }
}

fn u32_len(len: usize, what: &'static str) -> Result<u32, SimError> {
    u32::try_from(len).map_err(|_| SimError::InvalidParams {
        field: what,
        reason: format!("length {len} does not fit in u32"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use measurements::quote::{ParsedQuote, V4_REPORT_DATA_OFFSET};

    #[test]
    fn layout_matches_the_measurements_parser() {
        let platform = SimPlatform::from_seed([2u8; 32]).unwrap();
        let mut regs = super::super::default_registers();
        regs.mrtd = [1; 48];
        regs.rtmr = [[2; 48], [3; 48], [4; 48], [5; 48]];
        regs.mrconfigid = [6; 48];
        regs.mrowner = [7; 48];
        regs.mrownerconfig = [8; 48];
        let report_data = [9u8; 64];
        let quote = platform.quote(&regs, &report_data).unwrap();
        let parsed = ParsedQuote::parse(&quote).unwrap();
        assert_eq!(parsed.version, 4);
        assert_eq!(parsed.attestation_key_type, 2);
        assert_eq!(parsed.qe_vendor_id, dcap_qvl::INTEL_QE_VENDOR_ID);
        assert_eq!(parsed.report.registers, regs);
        assert_eq!(parsed.report.report_data, report_data);
        assert_eq!(parsed.report.tee_tcb_svn, platform.params().tee_tcb_svn);
        assert_eq!(parsed.report.mrseam, platform.params().mrseam);
        assert_eq!(
            &quote[V4_REPORT_DATA_OFFSET..V4_REPORT_DATA_OFFSET + 64],
            &report_data
        );
        assert_eq!(
            parsed.signature_data_len as usize,
            quote.len() - SIGNED_LEN - 4
        );
    }

    #[test]
    fn dcap_qvl_decodes_the_quote() {
        let platform = SimPlatform::from_seed([2u8; 32]).unwrap();
        let quote = platform
            .quote(&super::super::default_registers(), &[0; 64])
            .unwrap();
        let q = dcap_qvl::quote::Quote::parse(&quote).unwrap();
        assert_eq!(q.signed_length(), SIGNED_LEN);
        assert_eq!(q.inner_cert_type(), CERT_TYPE_PCK_CHAIN);
        let chain = dcap_qvl::intel::extract_cert_chain(&q).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2], platform.root_ca_der());
    }
}
