// Package signing signs images and attaches attestations in the layout
// cosign uses on a registry, so that `cosign verify --key` and `cosign
// verify-attestation --key` accept what Slipway produces, and verifies
// them. Keys are ECDSA P-256, as cosign generates. No transparency log
// and no network besides the registry: the lab has neither, and a key held
// by the platform is what the organisation's policy trusts.
package signing

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// GenerateKey returns a new ECDSA P-256 key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
	}
	return k, nil
}

// EncodePrivateKey returns key as a PKCS#8 "PRIVATE KEY" PEM block, the
// form `cosign import-key-pair` reads. It is unencrypted: it belongs in a
// Kubernetes Secret, whose storage is what protects it.
func EncodePrivateKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodePrivateKey reads a PKCS#8 or SEC 1 ("EC PRIVATE KEY") PEM block
// holding a P-256 key. Its errors never quote the input.
func DecodePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("decode private key: no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY":
		return nil, fmt.Errorf("decode private key: %s blocks are password-encrypted by cosign; export the key unencrypted (PKCS#8 PEM) for Slipway", block.Type)
	default:
		return nil, fmt.Errorf("decode private key: unsupported PEM block type %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("decode private key: %w", err)
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("decode private key: not an ECDSA P-256 key")
	}
	return ec, nil
}

// EncodePublicKey returns pub as a PKIX "PUBLIC KEY" PEM block, the
// cosign.pub format that `cosign verify --key` takes.
func EncodePublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// DecodePublicKey reads a PKIX "PUBLIC KEY" PEM block holding a P-256 key.
func DecodePublicKey(data []byte) (*ecdsa.PublicKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("decode public key: no PUBLIC KEY PEM block found")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("decode public key: %w", err)
	}
	ec, ok := key.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, errors.New("decode public key: not an ECDSA P-256 key")
	}
	return ec, nil
}
