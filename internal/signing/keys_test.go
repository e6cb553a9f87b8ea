package signing

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestKeyPEMRoundTrip(t *testing.T) {
	key := newKey(t)
	priv, err := EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodePrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Equal(key) {
		t.Fatal("private key changed in a PEM round trip")
	}
	pub, err := EncodePublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(pub), "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("public key PEM: %s", pub)
	}
	backPub, err := DecodePublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !backPub.Equal(&key.PublicKey) {
		t.Fatal("public key changed in a PEM round trip")
	}

	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := DecodePrivateKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})); err != nil || !k.Equal(key) {
		t.Fatalf("SEC 1 key: %v", err)
	}
}

func TestDecodeKeyErrors(t *testing.T) {
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(p384)
	secret := "c2VjcmV0LWtleS1tYXRlcmlhbA"
	for name, tc := range map[string]struct {
		in   string
		want string
	}{
		"not PEM":         {secret, "no PEM block"},
		"cosign format":   {string(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: []byte(secret)})), "password-encrypted"},
		"wrong curve":     {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), "not an ECDSA P-256 key"},
		"garbage content": {string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte(secret)})), "decode private key"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodePrivateKey([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error quotes the key: %v", err)
			}
		})
	}
	if _, err := DecodePublicKey([]byte("nope")); err == nil {
		t.Fatal("decoded a public key from garbage")
	}
}
