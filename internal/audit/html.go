package audit

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"time"
)

//go:embed evidence.html.tmpl
var evidenceTemplate string

// Languages of the HTML pack.
var Languages = []string{"ko", "en"}

// labels are the pack's words, by language.
var labels = map[string]map[string]string{
	"en": {
		"title": "Production change evidence", "period": "Period",
		"uncovered": "The period ends earlier than asked: the newest records are not yet covered by a signed checkpoint. Export again to include them.", "generated": "Generated", "log": "Audit log",
		"key": "Audit key fingerprint (SHA-256)", "filter": "Changes of", "namespace": "namespace", "application": "Application", "stage": "stage",
		"summary": "Summary", "changes": "changes", "succeeded": "succeeded", "failedChanges": "failed", "rollbacks": "rollbacks",
		"promotions": "promotions landed", "approvals": "approvals", "notCounted": "approvals not counted", "policyBlocks": "policy blocks", "refusals": "tenancy refusals",
		"drift": "drift repaired", "waiverChanges": "waiver changes", "webhookRefusals": "refused webhooks", "records": "records in the period",
		"changesTitle": "Changes", "noChanges": "No production change in the period.",
		"appliedAt": "Applied at (UTC)", "outcome": "Outcome", "revision": "Ops revision", "previousRevision": "Previous revision",
		"rollback": "Rollback", "appliedAs": "Applied as", "diff": "Objects changed", "error": "Error",
		"policy": "Policy result", "waivers": "Waivers used", "approver": "approver", "expires": "expires",
		"image": "Image", "sourceCommit": "Source commit", "author": "author", "test": "Test result", "isolation": "isolation",
		"signature": "Signature check", "signedBy": "signed by the pipeline's key", "notSigned": "no signature recorded",
		"sbomProvenance": "SBOM and provenance", "promotion": "Promotion", "requester": "requested by", "approvers": "approved by",
		"changeID": "change id", "noPromotion": "not promoted (the stage's Pipeline or a direct change of the ops repository)",
		"evidenceRecords": "Evidence records", "verification": "Verification of the whole audit log",
		"verified":    "VERIFIED: every record intact, linked and covered by signed checkpoints",
		"notVerified": "NOT VERIFIED: see the problems below", "recordsChecked": "Records checked", "range": "Records",
		"head": "Head hash", "checkpoints": "Signed checkpoints matched", "witnessed": "witnessed", "problem": "Problem",
		"record": "record", "note": "Note", "segment": "Records included in this file for offline verification",
		"reverify":  "How to re-verify this file offline",
		"step1":     "Obtain the audit public key (audit.pub) from its owner, not from this file, and check that its fingerprint is",
		"step2":     "With Slipway, check every record in this file, its links and the signed checkpoint, and that the changes above are what the records say:",
		"step3":     "Without Slipway: the records are in this file (script element slipway-evidence, field segment.records), one JSON line each; docs/audit.md describes the canonical encoding whose SHA-256 each record's hash is, and the checkpoint format signed with ECDSA P-256.",
		"step4":     "To check the whole log (nothing cut off since), with read access to the store and the witness repository:",
		"publicKey": "Public key in this file (compare its fingerprint)", "yes": "yes", "no": "no",
		"out.succeeded": "succeeded", "out.failed": "failed", "out.refused": "refused", "out.blocked": "blocked", "out.cancelled": "cancelled",
		"kind.sync.applied": "deployment", "kind.sync.rollback": "rollback", "kind.sync.drift-repaired": "drift repaired", "kind.sync.failed": "failed sync",
	},
	"ko": {
		"title": "운영 환경 변경 증적", "period": "기간",
		"uncovered": "요청한 기간보다 일찍 끝납니다: 가장 최근 레코드가 아직 서명된 체크포인트로 보증되지 않았습니다. 포함하려면 다시 내보내십시오.", "generated": "생성 시각", "log": "감사 로그",
		"key": "감사 키 지문 (SHA-256)", "filter": "대상", "namespace": "네임스페이스", "application": "애플리케이션", "stage": "단계",
		"summary": "요약", "changes": "변경", "succeeded": "성공", "failedChanges": "실패", "rollbacks": "롤백",
		"promotions": "승격 반영", "approvals": "승인", "notCounted": "인정되지 않은 승인", "policyBlocks": "정책 차단", "refusals": "테넌시 거부",
		"drift": "드리프트 복구", "waiverChanges": "예외(Waiver) 변경", "webhookRefusals": "거부된 웹훅", "records": "기간 내 레코드",
		"changesTitle": "변경 내역", "noChanges": "기간 내 운영 환경 변경이 없습니다.",
		"appliedAt": "적용 시각 (UTC)", "outcome": "결과", "revision": "운영 저장소 리비전", "previousRevision": "이전 리비전",
		"rollback": "롤백", "appliedAs": "적용 주체", "diff": "변경된 객체", "error": "오류",
		"policy": "정책 검사 결과", "waivers": "적용된 예외(Waiver)", "approver": "승인자", "expires": "만료",
		"image": "이미지", "sourceCommit": "소스 커밋", "author": "작성자", "test": "테스트 결과", "isolation": "격리",
		"signature": "서명 검증", "signedBy": "파이프라인 키로 서명됨", "notSigned": "서명 기록 없음",
		"sbomProvenance": "SBOM 및 출처 증명(Provenance)", "promotion": "승격", "requester": "요청자", "approvers": "승인자",
		"changeID": "변경 번호", "noPromotion": "승격 없음 (해당 단계의 파이프라인 또는 운영 저장소 직접 변경)",
		"evidenceRecords": "근거 레코드", "verification": "감사 로그 전체 무결성 검증",
		"verified":    "검증 완료: 모든 레코드가 온전하고 연결되어 있으며 서명된 체크포인트로 보증됨",
		"notVerified": "검증 실패: 아래 문제를 확인하십시오", "recordsChecked": "검사한 레코드 수", "range": "레코드 범위",
		"head": "최종 해시", "checkpoints": "일치한 서명 체크포인트", "witnessed": "외부 보관(witness)", "problem": "문제",
		"record": "레코드", "note": "참고", "segment": "오프라인 검증을 위해 이 파일에 포함된 레코드",
		"reverify":  "이 파일을 오프라인으로 재검증하는 방법",
		"step1":     "감사 공개키(audit.pub)를 이 파일이 아닌 키 관리자로부터 받아, 지문이 다음과 같은지 확인합니다:",
		"step2":     "Slipway로 이 파일의 모든 레코드, 해시 연결, 서명된 체크포인트를 검사하고, 위 변경 내역이 레코드와 일치하는지 확인합니다:",
		"step3":     "Slipway 없이: 레코드는 이 파일 안(script 요소 slipway-evidence, segment.records 필드)에 한 줄에 하나의 JSON으로 들어 있습니다. 각 레코드 해시가 계산되는 정규 인코딩(SHA-256)과 ECDSA P-256으로 서명된 체크포인트 형식은 docs/audit.md에 설명되어 있습니다.",
		"step4":     "로그 전체(이후 잘려 나간 부분이 없는지)를 검사하려면 저장소와 witness 저장소에 대한 읽기 권한으로 다음을 실행합니다:",
		"publicKey": "이 파일에 포함된 공개키 (지문을 비교하십시오)", "yes": "예", "no": "아니오",
		"out.succeeded": "성공", "out.failed": "실패", "out.refused": "거부", "out.blocked": "차단", "out.cancelled": "취소",
		"kind.sync.applied": "배포", "kind.sync.rollback": "롤백", "kind.sync.drift-repaired": "드리프트 복구", "kind.sync.failed": "배포 실패",
		"val.passed": "통과", "val.failed": "실패", "val.no profile applies": "적용되는 프로필 없음",
		"val.Succeeded": "성공", "val.Failed": "실패", "val.Skipped": "건너뜀",
	},
}

// WriteHTML writes the pack as one self-contained HTML file (inline
// style, no script, no fetch) in lang, with the pack itself embedded as
// JSON so that `slipway audit verify --pack` can check the file. file is
// the name the instructions use for it.
func WriteHTML(w io.Writer, p *Pack, lang, file string) error {
	words, ok := labels[lang]
	if !ok {
		return fmt.Errorf("language %q: use one of %s", lang, strings.Join(Languages, ", "))
	}
	t := func(key string) string {
		if s, ok := words[key]; ok {
			return s
		}
		return key
	}
	funcs := template.FuncMap{
		"t":        t,
		"date":     func(tm time.Time) string { return tm.UTC().Format("2006-01-02") },
		"datetime": func(tm time.Time) string { return tm.UTC().Format("2006-01-02 15:04:05") },
		"inc":      func(i int) int { return i + 1 },
		"outcome":  func(o string) string { return t("out." + o) },
		"kind":     func(k string) string { return t("kind." + k) },
		// word translates the values Slipway writes (a test step's state,
		// a policy verdict), and leaves any other text as it is.
		"word": func(v string) string {
			if s, ok := words["val."+v]; ok {
				return s
			}
			return v
		},
		"yesno": func(b bool) string {
			if b {
				return t("yes")
			}
			return t("no")
		},
		"join": func(s []string) string { return strings.Join(s, ", ") },
		"short": func(s string) string {
			if len(s) > 16 {
				return s[:16]
			}
			return s
		},
		"seqs": func(seqs []uint64) string {
			out := make([]string, len(seqs))
			for i, s := range seqs {
				out[i] = strconv.FormatUint(s, 10)
			}
			return strings.Join(out, ", ")
		},
	}
	tmpl, err := template.New("pack").Funcs(funcs).Parse(evidenceTemplate)
	if err != nil {
		return err
	}
	// encoding/json escapes <, > and & in strings, so the JSON cannot end
	// the script element it sits in.
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return tmpl.Execute(w, map[string]any{"Pack": p, "Lang": lang, "File": file, "JSON": template.JS(b)})
}

// evidenceScript opens the element holding the pack in the HTML file.
const evidenceScript = `<script type="application/json" id="slipway-evidence">`

// ReadPack reads a pack from its JSON, or from the HTML file it is embedded in.
func ReadPack(b []byte) (*Pack, error) {
	if i := bytes.Index(b, []byte(evidenceScript)); i >= 0 {
		rest := b[i+len(evidenceScript):]
		end := bytes.Index(rest, []byte("</script>"))
		if end < 0 {
			return nil, errors.New("the evidence file's data element is not closed")
		}
		b = rest[:end]
	}
	p := &Pack{}
	if err := json.Unmarshal(b, p); err != nil {
		return nil, fmt.Errorf("reading the evidence pack: %w", err)
	}
	return p, nil
}
